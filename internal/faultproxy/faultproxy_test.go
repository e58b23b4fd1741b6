package faultproxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestCutAfterCommitDeliversTheRest: a COMMIT cut after it reached the
// server must run there. A pipeline can cross the wire in more than one
// chunk, the one that names COMMIT and then the rest (its Sync, without
// which the server has not finished it): all of it reaches the server, and
// the server's answer does not reach the client, whose connection closes
// when the answer comes.
func TestCutAfterCommitDeliversTheRest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() { // the server: reads "...commit" and "sync", then answers
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var all []byte
		buf := make([]byte, 1024)
		for !bytes.HasSuffix(all, []byte("sync")) {
			n, err := c.Read(buf)
			all = append(all, buf[:n]...)
			if err != nil {
				break
			}
		}
		got <- all
		_, _ = c.Write([]byte("committed"))
	}()

	p, err := Start(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	client, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	p.Arm(CutAfterCommit)
	if _, err := client.Write([]byte("insert; commit")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the proxy reads the first chunk alone
	if _, err := client.Write([]byte("; sync")); err != nil {
		t.Fatal(err)
	}

	select {
	case all := <-got:
		if string(all) != "insert; commit; sync" {
			t.Fatalf("the server got %q, want the whole pipeline", all)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server never got the rest of the pipeline")
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer, err := io.ReadAll(client)
	if len(answer) != 0 {
		t.Fatalf("the client got the answer %q, want none", answer)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the client's connection stayed open after the server answered")
	}
	if p.Cuts() != 1 {
		t.Errorf("%d cuts, want 1", p.Cuts())
	}
}
