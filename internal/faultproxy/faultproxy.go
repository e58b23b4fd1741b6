// Package faultproxy is a TCP proxy for tests that cuts connections at the
// moment that matters: when the client sends COMMIT. It forwards the
// COMMIT to the server and then drops the connection before the answer comes
// back (the server committed, the client cannot know), or drops it before
// forwarding (nothing committed, the client cannot know either).
package faultproxy

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
)

// Mode says what the proxy does when it sees COMMIT.
type Mode int32

const (
	// Pass forwards everything.
	Pass Mode = iota
	// CutAfterCommit forwards the COMMIT, then closes the connection
	// before the server's answer reaches the client.
	CutAfterCommit
	// CutBeforeCommit closes the connection instead of forwarding COMMIT.
	CutBeforeCommit
)

// Proxy forwards TCP connections from Addr to a target.
type Proxy struct {
	ln     net.Listener
	target string
	mode   atomic.Int32
	cuts   atomic.Int64
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
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

// Arm sets what happens at the next COMMIT; after one cut the proxy goes
// back to Pass.
func (p *Proxy) Arm(m Mode) { p.mode.Store(int32(m)) }

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
		go p.pipe(client, server, true)
		go p.pipe(server, client, false)
	}
}

var commit = []byte("commit")

func (p *Proxy) pipe(from, to net.Conn, upstream bool) {
	keepTarget := false
	defer func() {
		p.untrack(from)
		if !keepTarget {
			p.untrack(to)
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if upstream && Mode(p.mode.Load()) != Pass && bytes.Contains(bytes.ToLower(chunk), commit) {
				mode := Mode(p.mode.Swap(int32(Pass)))
				if mode == CutAfterCommit {
					_, _ = to.Write(chunk)
				}
				if mode != Pass {
					p.cuts.Add(1)
					// Drop the client. After a forwarded COMMIT the server
					// connection stays open until the server answers (the
					// other pipe then fails to deliver it and closes it), so
					// the server is not interrupted before it commits.
					keepTarget = mode == CutAfterCommit
					return
				}
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
