package httpadapter

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// Errors the capture writer gives a handler that does what an idempotent
// response cannot do; the response then becomes a 500 problem (see the
// package documentation).
var (
	// ErrResponseTooLarge is what Write returns once the response body is
	// over the limit (WithMaxResponseBytes).
	ErrResponseTooLarge = errors.New("httpadapter: response body over the limit for idempotent requests; nothing will be stored")

	// ErrStreaming is what Flush (through http.ResponseController) and
	// Hijack return: a streamed response cannot be stored and replayed.
	ErrStreaming = errors.New("httpadapter: streaming is not supported for idempotent requests; nothing will be stored")
)

// capture buffers a handler's response so that it can be stored in the
// transaction before any byte reaches the client. Like chi's wrap_writer it
// keeps http.Flusher and http.Hijacker (they report ErrStreaming rather than
// vanish from a type assertion) and has Unwrap, so http.ResponseController
// reaches the real writer for deadlines.
type capture struct {
	w        http.ResponseWriter
	header   http.Header
	status   int
	body     bytes.Buffer
	limit    int64
	overflow bool
	streamed bool
}

var (
	_ http.Flusher  = (*capture)(nil)
	_ http.Hijacker = (*capture)(nil)
)

func newCapture(w http.ResponseWriter, limit int64) *capture {
	return &capture{w: w, header: http.Header{}, limit: limit}
}

func (c *capture) Header() http.Header { return c.header }

func (c *capture) WriteHeader(code int) {
	if c.status != 0 {
		return // as net/http: the first status wins
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("httpadapter: invalid WriteHeader code %d", code))
	}
	if code < 200 {
		// 1xx answers (103 Early Hints) are not part of the stored
		// response and cannot be sent before the commit: drop them.
		return
	}
	c.status = code
}

func (c *capture) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.WriteHeader(http.StatusOK)
	}
	if c.overflow {
		return 0, ErrResponseTooLarge
	}
	if int64(c.body.Len())+int64(len(p)) > c.limit {
		c.overflow = true
		c.body = bytes.Buffer{} // release what was buffered
		return 0, ErrResponseTooLarge
	}
	return c.body.Write(p)
}

// Flush marks the response as streamed: nothing is sent, and nothing will
// be stored.
func (c *capture) Flush() { c.streamed = true }

// FlushError is what http.ResponseController.Flush calls: it marks the
// response as streamed and says so.
func (c *capture) FlushError() error {
	c.streamed = true
	return ErrStreaming
}

// Hijack refuses: the bytes written to a hijacked connection could be
// neither stored nor replayed.
func (c *capture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c.streamed = true
	return nil, nil, ErrStreaming
}

// Unwrap returns the real writer, for http.ResponseController.
func (c *capture) Unwrap() http.ResponseWriter { return c.w }

// code is the response's status, 200 when the handler wrote nothing.
func (c *capture) code() int {
	if c.status == 0 {
		return http.StatusOK
	}
	return c.status
}

// send writes the captured response, every header included, to w.
func (c *capture) send(w http.ResponseWriter) {
	h := w.Header()
	for k, v := range c.header {
		h[k] = v
	}
	w.WriteHeader(c.code())
	_, _ = w.Write(c.body.Bytes())
}
