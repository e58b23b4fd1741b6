package main

import (
	"net"
	"sync"
	"sync/atomic"
)

// tripProxy forwards TCP connections to a server and counts round trips:
// each time the server answers after the client sent something is one. It
// sees the wire, so it counts what the driver really does (lib/pq's
// separate Parse and Bind exchanges, go-sql-driver/mysql's prepare and
// execute) without knowing either protocol.
type tripProxy struct {
	ln     net.Listener
	target string
	trips  atomic.Int64
	mu     sync.Mutex
	conns  []net.Conn
}

func startProxy(target string) (*tripProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &tripProxy{ln: ln, target: target}
	go p.accept()
	return p, nil
}

func (p *tripProxy) addr() string { return p.ln.Addr().String() }

func (p *tripProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		var sent atomic.Bool // the client spoke since the server last did
		go p.pipe(s, c, func() { sent.Store(true) })
		go p.pipe(c, s, func() {
			if sent.Swap(false) {
				p.trips.Add(1)
			}
		})
	}
}

// pipe copies from src to dst, calling seen before each chunk is forwarded
// (so the direction is recorded before the other side can answer).
func (p *tripProxy) pipe(dst, src net.Conn, seen func()) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			seen()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
}

func (p *tripProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
}
