package ginadapter

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"

	"github.com/gin-gonic/gin"
)

// writer is the gin.ResponseWriter of one attempt, over the middleware's
// buffer (w): like Gin's own, it holds the status until the first byte or
// WriteHeaderNow, so a handler may change it until then.
type writer struct {
	w      http.ResponseWriter
	status int
	size   int // -1 until the header is written
}

var _ gin.ResponseWriter = (*writer)(nil)

func newWriter(w http.ResponseWriter) *writer {
	return &writer{w: w, status: http.StatusOK, size: -1}
}

func (w *writer) Header() http.Header { return w.w.Header() }

func (w *writer) WriteHeader(code int) {
	if code > 0 && !w.Written() {
		w.status = code
	}
}

func (w *writer) WriteHeaderNow() {
	if !w.Written() {
		w.size = 0
		w.w.WriteHeader(w.status)
	}
}

func (w *writer) Write(p []byte) (int, error) {
	w.WriteHeaderNow()
	n, err := w.w.Write(p)
	w.size += n
	return n, err
}

func (w *writer) WriteString(s string) (int, error) { return io.WriteString(w, s) }

func (w *writer) Status() int   { return w.status }
func (w *writer) Size() int     { return w.size }
func (w *writer) Written() bool { return w.size != -1 }

// Flush and Hijack reach the middleware's buffer, which refuses them: a
// streamed answer cannot be stored (500 streaming-unsupported).
func (w *writer) Flush() {
	w.WriteHeaderNow()
	if f, ok := w.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if h, ok := w.w.(http.Hijacker); ok {
		return h.Hijack()
	}
	return nil, nil, errors.New("ginadapter: the response cannot be hijacked")
}

// CloseNotify never fires: the request's context says when the client
// has gone.
func (w *writer) CloseNotify() <-chan bool { return make(chan bool) }

// Pusher is nil: nothing is pushed before the answer is stored.
func (w *writer) Pusher() http.Pusher { return nil }

// Unwrap returns the middleware's writer, for http.ResponseController.
func (w *writer) Unwrap() http.ResponseWriter { return w.w }
