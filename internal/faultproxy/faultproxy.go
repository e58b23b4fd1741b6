// Package faultproxy is a TCP proxy for tests and benchmarks that cuts
// connections at the moment that matters: when the client sends COMMIT, or
// its next message, whatever it holds. It forwards that message, and what
// follows it, to the server and drops the connection when the answer comes,
// before the client gets it (the server committed, the client cannot
// know), or drops it before forwarding (nothing committed, the client
// cannot know either).
//
// It also counts round trips at the wire: each time the server answers
// after the client sent something is one. It knows no protocol, so it counts
// what a driver really does (lib/pq's separate Parse and Bind exchanges,
// go-sql-driver/mysql's prepare and execute, pgx's pipelines and pings).
package faultproxy

import (
	"bytes"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Mode says what the proxy does when it sees COMMIT.
type Mode int32

const (
	// Pass forwards everything.
	Pass Mode = iota
	// CutAfterCommit forwards the COMMIT, and whatever the client sends
	// after it, and closes the connection when the server answers, before
	// the answer reaches the client: the server has run the COMMIT.
	CutAfterCommit
	// CutBeforeCommit closes the connection instead of forwarding COMMIT.
	CutBeforeCommit
	// CutAfterNext is CutAfterCommit at the next message any client sends,
	// whatever it holds: on a warm pgx connection the save pipeline names
	// prepared statements, and the word COMMIT never crosses the wire.
	CutAfterNext
	// CutBeforeNext is CutBeforeCommit at the next message any client
	// sends.
	CutBeforeNext
)

// Proxy forwards TCP connections from Addr to a target.
type Proxy struct {
	ln     net.Listener
	target string
	mode   atomic.Int32
	cuts   atomic.Int64
	trips  atomic.Int64
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool

	chaos atomic.Pointer[Chaos]
	stats struct{ delays, drops, cutsMid, commitCutsAfter, commitCutsBefore atomic.Int64 }
}

// Chaos makes the proxy inject faults at random into every connection, on
// top of the armed Mode: each chunk of bytes it forwards (in either
// direction) may be delayed, may stall the connection (a drop: nothing is
// forwarded for Hold, then the connection is closed), or may cut the
// connection mid-statement; a chunk the client sends that holds COMMIT may
// be cut before or after it reaches the server (commit outcome unknown).
// Probabilities are per chunk, from 0 to 1.
type Chaos struct {
	DelayProb  float64
	MaxDelay   time.Duration
	DropProb   float64
	Hold       time.Duration // how long a dropped connection stalls; default 1s
	CutProb    float64
	CommitProb float64 // cut at a COMMIT, before or after forwarding it (even odds)
}

// Stats counts the faults injected so far, by kind.
type Stats struct {
	Delays           int64 // chunks delayed
	Drops            int64 // connections stalled, then closed
	CutsMid          int64 // connections cut mid-stream
	CommitCutsAfter  int64 // COMMIT forwarded, answer lost (Arm or Chaos)
	CommitCutsBefore int64 // COMMIT never forwarded (Arm or Chaos)
}

// SetChaos turns random faults on (or off, with nil) for every connection,
// including those already open.
func (p *Proxy) SetChaos(c *Chaos) {
	if c != nil {
		cp := *c
		c = &cp
	}
	p.chaos.Store(c)
}

// Stats returns the faults injected so far.
func (p *Proxy) Stats() Stats {
	return Stats{
		Delays:           p.stats.delays.Load(),
		Drops:            p.stats.drops.Load(),
		CutsMid:          p.stats.cutsMid.Load(),
		CommitCutsAfter:  p.stats.commitCutsAfter.Load(),
		CommitCutsBefore: p.stats.commitCutsBefore.Load(),
	}
}

// Start listens on a loopback port and forwards to target (host:port).
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Arm sets what happens at the next COMMIT (or next message); after one cut
// the proxy goes back to Pass.
func (p *Proxy) Arm(m Mode) { p.mode.Store(int32(m)) }

// Trips counts the round trips so far, on every connection.
func (p *Proxy) Trips() int64 { return p.trips.Load() }

// Cuts counts the connections cut so far.
func (p *Proxy) Cuts() int64 { return p.cuts.Load() }

// Close stops the proxy and drops every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	return p.ln.Close()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client) || !p.track(server) {
			_ = client.Close()
			_ = server.Close()
			continue
		}
		l := new(link)
		go p.pipe(client, server, l, true)
		go p.pipe(server, client, l, false)
	}
}

var commit = []byte("commit")

// link is the state the two pipes of one connection share.
type link struct {
	// turn is whose move it is: set when the client speaks, taken when
	// the server answers. It is set before the client's bytes are
	// forwarded, so the answer cannot overtake it.
	turn atomic.Bool
	// severed is set when a COMMIT was forwarded to be cut after: the
	// rest of what the client sends still reaches the server (a pipeline
	// may go on past the chunk that names COMMIT, up to its Sync), and the
	// server's answer, which comes once it has run them, closes both
	// connections instead of reaching the client.
	severed atomic.Bool
}

func (p *Proxy) pipe(from, to net.Conn, l *link, upstream bool) {
	defer func() {
		p.untrack(from)
		p.untrack(to)
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if !upstream && l.severed.Load() {
				return // the answer to a cut COMMIT: both connections close
			}
			if upstream {
				l.turn.Store(true)
			} else if l.turn.Swap(false) {
				p.trips.Add(1)
			}
			isCommit := upstream && bytes.Contains(bytes.ToLower(chunk), commit)
			mode := Pass
			if c := p.chaos.Load(); c != nil && !l.severed.Load() {
				switch f := p.roll(c, isCommit); f {
				case faultDrop:
					hold := c.Hold
					if hold <= 0 {
						hold = time.Second
					}
					time.Sleep(hold)
					return
				case faultCut:
					return
				case faultCommitBefore:
					mode = CutBeforeCommit
				case faultCommitAfter:
					mode = CutAfterCommit
				}
			}
			if mode == Pass && upstream {
				switch armed := Mode(p.mode.Load()); {
				case armed == CutAfterNext || armed == CutBeforeNext,
					isCommit && armed != Pass:
					if p.mode.CompareAndSwap(int32(armed), int32(Pass)) {
						mode = armed
					}
				}
			}
			switch mode {
			case Pass:
			case CutAfterCommit, CutAfterNext:
				// Hand the server the COMMIT, and what follows it, but
				// never its answer to the client: see link.severed.
				l.severed.Store(true)
				p.stats.commitCutsAfter.Add(1)
				p.cuts.Add(1)
			default:
				// Drop the client, and the COMMIT with it.
				p.stats.commitCutsBefore.Add(1)
				p.cuts.Add(1)
				return
			}
			if _, werr := to.Write(chunk); werr != nil {
				return
			}
		}
		if err != nil {
			return // io.EOF or a closed connection
		}
	}
}

type fault int

const (
	faultNone fault = iota
	faultDrop
	faultCut
	faultCommitBefore
	faultCommitAfter
)

// roll draws the fault for one chunk and sleeps for a delay.
func (p *Proxy) roll(c *Chaos, isCommit bool) fault {
	if c.DelayProb > 0 && c.MaxDelay > 0 && rand.Float64() < c.DelayProb {
		p.stats.delays.Add(1)
		time.Sleep(rand.N(c.MaxDelay) + 1)
	}
	if isCommit && c.CommitProb > 0 && rand.Float64() < c.CommitProb {
		// The counts are taken where the cut happens.
		if rand.IntN(2) == 0 {
			return faultCommitBefore
		}
		return faultCommitAfter
	}
	if c.DropProb > 0 && rand.Float64() < c.DropProb {
		p.stats.drops.Add(1)
		return faultDrop
	}
	if c.CutProb > 0 && rand.Float64() < c.CutProb {
		p.stats.cutsMid.Add(1)
		return faultCut
	}
	return faultNone
}
