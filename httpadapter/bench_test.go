package httpadapter

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkMiddleware measures the middleware's own cost around a handler
// that writes a small JSON answer and no business row, on SQLite in a
// temporary file (the cheapest real store). Every case reports x-bare, its
// time per request over the bare handler's in the same run.
func BenchmarkMiddleware(b *testing.B) {
	e := sqliteEnv(b)
	s := e.store(b)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"ch_1","amount":100}`))
	})
	mw := Middleware(s)(h)
	var bareNs float64
	run := func(name string, handler http.Handler, method string, key func(i int) string) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			start := time.Now()
			for i := 0; b.Loop(); i++ {
				req := httptest.NewRequest(method, "/v1/charges", strings.NewReader(`{"amount":100}`))
				if k := key(i); k != "" {
					req.Header.Set(KeyHeader, k)
				}
				w := httptest.NewRecorder()
				handler.ServeHTTP(w, req)
				if w.Code != http.StatusCreated {
					b.Fatalf("status %d: %s", w.Code, w.Body)
				}
			}
			ns := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			if name == "bare" {
				bareNs = ns
			} else if bareNs > 0 {
				b.ReportMetric(ns/bareNs, "x-bare")
			}
		})
	}
	none := func(int) string { return "" }
	run("bare", h, http.MethodPost, none)
	run("passthrough-GET", mw, http.MethodGet, none)
	run("keyless-POST", mw, http.MethodPost, none)
	prefix := NewKey()
	run("new-key", mw, http.MethodPost, func(i int) string { return prefix + "-" + strconv.Itoa(i) })
	run("replay", mw, http.MethodPost, func(int) string { return "replayed-key" })
}
