package httpadapter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// script is a server that answers attempt i with statuses[i] (the last one
// after that) and records what each attempt carried.
type script struct {
	statuses []int
	header   http.Header // added to every non-final answer
	mu       sync.Mutex
	keys     []string
	bodies   []string
	onArrive func(attempt int)
}

func (s *script) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.keys = append(s.keys, r.Header.Get(KeyHeader))
	s.bodies = append(s.bodies, string(b))
	n := len(s.keys)
	s.mu.Unlock()
	if s.onArrive != nil {
		s.onArrive(n)
	}
	code := s.statuses[min(n, len(s.statuses))-1]
	if n < len(s.statuses) {
		for k, v := range s.header {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(code)
	fmt.Fprintf(w, "attempt %d", n)
}

func (s *script) attempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

var uuidV7 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func fastTransport() *Transport {
	return &Transport{MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, MaxAttempts: 4}
}

func TestTransportRetriesWithTheSameKey(t *testing.T) {
	for _, code := range []int{500, 502, 503, 409, 429} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			t.Parallel()
			s := &script{statuses: []int{code, code, 201}}
			srv := httptest.NewServer(s)
			defer srv.Close()
			c := &http.Client{Transport: fastTransport()}
			// A body without GetBody: the transport buffers it.
			req, _ := http.NewRequest(http.MethodPost, srv.URL, io.NopCloser(strings.NewReader("payload")))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 201 || s.attempts() != 3 {
				t.Fatalf("status %d after %d attempts, want 201 after 3", resp.StatusCode, s.attempts())
			}
			if !uuidV7.MatchString(s.keys[0]) || s.keys[1] != s.keys[0] || s.keys[2] != s.keys[0] {
				t.Errorf("keys %q, want one UUIDv7 for every attempt", s.keys)
			}
			for _, b := range s.bodies {
				if b != "payload" {
					t.Errorf("bodies %q, want the body on every attempt", s.bodies)
				}
			}
			if req.Header.Get(KeyHeader) != "" {
				t.Error("the transport modified the caller's request")
			}
		})
	}
}

func TestTransportDoesNotRetry(t *testing.T) {
	for _, tc := range []struct {
		name, method, key string
		code              int
		header            http.Header
	}{
		{"422", http.MethodPost, "", 422, nil},
		{"400", http.MethodPost, "", 400, nil},
		{"404", http.MethodPatch, "", 404, nil},
		{"GET without a key", http.MethodGet, "", 503, nil},
		{"Retry-After past MaxBackoff", http.MethodPost, "", 503, http.Header{"Retry-After": {"3600"}}},
		// A replay repeats the stored answer to every retry.
		{"replayed 409", http.MethodPost, "", 409, http.Header{ReplayedHeader: {"true"}}},
		{"replayed 503", http.MethodPost, "", 503, http.Header{ReplayedHeader: {"true"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := &script{statuses: []int{tc.code, 201}, header: tc.header}
			srv := httptest.NewServer(s)
			defer srv.Close()
			req, _ := http.NewRequest(tc.method, srv.URL, strings.NewReader("x"))
			resp, err := (&http.Client{Transport: fastTransport()}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.code || s.attempts() != 1 {
				t.Errorf("status %d after %d attempts, want %d after 1", resp.StatusCode, s.attempts(), tc.code)
			}
			if got := s.keys[0]; (tc.method == http.MethodGet) != (got == "") {
				t.Errorf("%s got key %q", tc.method, got)
			}
		})
	}
}

func TestTransportKeepsTheCallersKey(t *testing.T) {
	s := &script{statuses: []int{503, 200}}
	srv := httptest.NewServer(s)
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodDelete, srv.URL, nil)
	req.Header.Set(KeyHeader, "mine")
	resp, err := (&http.Client{Transport: fastTransport()}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || s.keys[0] != "mine" || s.keys[1] != "mine" {
		t.Errorf("status %d, keys %q", resp.StatusCode, s.keys)
	}
}

func TestTransportGivesUp(t *testing.T) {
	s := &script{statuses: []int{503}, header: http.Header{"Retry-After": {"0"}}}
	srv := httptest.NewServer(s)
	defer srv.Close()
	resp, err := (&http.Client{Transport: fastTransport()}).Post(srv.URL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || s.attempts() != 4 || string(b) != "attempt 4" {
		t.Errorf("status %d %q after %d attempts, want the 4th answer", resp.StatusCode, b, s.attempts())
	}
}

func TestTransportStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &script{statuses: []int{503}, onArrive: func(int) { cancel() }}
	srv := httptest.NewServer(s)
	defer srv.Close()
	tr := &Transport{MinBackoff: time.Hour, MaxBackoff: time.Hour}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, strings.NewReader("x"))
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err == nil {
		resp.Body.Close()
		// The answer may have beaten the cancellation; it must not be retried.
	} else if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if s.attempts() != 1 {
		t.Errorf("%d attempts after the context ended", s.attempts())
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"7":                             7 * time.Second,
		" 0 ":                           0,
		"Thu, 02 Jan 2025 03:04:35 GMT": 30 * time.Second,
		"Thu, 02 Jan 2025 03:00:00 GMT": 0, // in the past
	} {
		if got, ok := retryAfter(v, now); !ok || got != want {
			t.Errorf("retryAfter(%q) = %v, %v; want %v", v, got, ok, want)
		}
	}
	for _, v := range []string{"", "-1", "soon", "1.5"} {
		if _, ok := retryAfter(v, now); ok {
			t.Errorf("retryAfter(%q) accepted", v)
		}
	}
}

// flaky fails some attempts on the client's side: every 4th before it is
// sent, every 5th after the server answered (the answer is lost).
type flaky struct {
	base             http.RoundTripper
	n, before, after atomic.Int64
}

var errInjected = errors.New("injected network failure")

func (f *flaky) RoundTrip(r *http.Request) (*http.Response, error) {
	n := f.n.Add(1)
	if n%4 == 0 {
		f.before.Add(1)
		r.Body.Close()
		return nil, errInjected
	}
	resp, err := f.base.RoundTrip(r)
	if err == nil && n%5 == 0 {
		f.after.Add(1)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, errInjected
	}
	return resp, err
}

// dropEvery lets the server handle and commit every nth request, then
// drops its connection.
func dropEvery(n int64, dropped *atomic.Int64) func(http.Handler) http.Handler {
	var seen atomic.Int64
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if seen.Add(1)%n != 0 {
				next.ServeHTTP(w, r)
				return
			}
			dropped.Add(1)
			next.ServeHTTP(httptest.NewRecorder(), r)
			panic(http.ErrAbortHandler)
		})
	}
}

func TestTransportAgainstMiddleware(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		var dropped atomic.Int64
		srv := e.server(t, e.store(t), nil, dropEvery(3, &dropped))
		srv.Config.ErrorLog = quietLog()
		f := &flaky{base: srv.Client().Transport}
		c := &http.Client{Transport: &Transport{Base: f, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, MaxAttempts: 20}}
		const n = 16
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				r, err := send(context.Background(), c, srv.URL+"/accounts/a1/charges", "", fmt.Sprintf(`{"ref":"r%d","amount":%d}`, i, i+1))
				if err != nil || r.status != http.StatusCreated {
					t.Errorf("request %d: %v %d %s", i, err, r.status, r.body)
				}
			})
		}
		wg.Wait()
		for i := range n {
			if got := e.charges(t, fmt.Sprintf("r%d", i)); got != 1 {
				t.Errorf("r%d: %d charges, want exactly 1", i, got)
			}
		}
		if dropped.Load() == 0 || f.before.Load() == 0 || f.after.Load() == 0 {
			t.Errorf("faults injected: %d server drops, %d before, %d after; want some of each", dropped.Load(), f.before.Load(), f.after.Load())
		}
	})
}

// TestTransportDoesNotRetryFinalProblems: the middleware's 500 problems that
// a retry would meet again, or that say a retry is not safe, are returned
// at once, body intact; its other 5xx are retried.
func TestTransportDoesNotRetryFinalProblems(t *testing.T) {
	for _, tc := range []struct {
		typ   string
		retry bool
	}{
		{ProblemTransactionEnded, false},
		{ProblemResponseTooLarge, false},
		{ProblemStreaming, false},
		{ProblemScopeInvalid, false},
		{ProblemFingerprintFailed, false},
		{ProblemHandlerPanic, true},
		{"https://example.com/problems/other", true},
	} {
		t.Run(tc.typ[strings.LastIndexAny(tc.typ, "/#")+1:], func(t *testing.T) {
			t.Parallel()
			var attempts atomic.Int64
			body := fmt.Sprintf(`{"type":%q,"title":"t","status":500,"detail":"%s"}`, tc.typ, strings.Repeat("d", 300))
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if attempts.Add(1) > 1 {
					w.WriteHeader(http.StatusCreated)
					return
				}
				w.Header().Set("Content-Type", ProblemContentType)
				w.WriteHeader(http.StatusInternalServerError)
				fmt.Fprint(w, body)
			}))
			defer srv.Close()
			resp, err := (&http.Client{Transport: fastTransport()}).Post(srv.URL, "application/json", strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			if tc.retry {
				if resp.StatusCode != http.StatusCreated || attempts.Load() != 2 {
					t.Errorf("status %d after %d attempts, want a retry", resp.StatusCode, attempts.Load())
				}
				return
			}
			if resp.StatusCode != 500 || attempts.Load() != 1 || string(got) != body {
				t.Errorf("status %d after %d attempts, body %q; want the first answer, whole", resp.StatusCode, attempts.Load(), got)
			}
		})
	}
}

// TestBackoffBounds: the wait before a retry is never zero or negative,
// never over MaxBackoff, within [ceiling/2, ceiling] of the doubling
// ceiling, and never panics, however large MinBackoff and the attempt.
func TestBackoffBounds(t *testing.T) {
	for _, tc := range []struct{ minB, maxB time.Duration }{
		{0, 0},
		{time.Millisecond, 20 * time.Millisecond},
		{time.Hour, 0},
		{24 * time.Hour, 365 * 24 * time.Hour},
		{365 * 24 * time.Hour, math.MaxInt64},
		{math.MaxInt64, math.MaxInt64},
		{time.Second, time.Millisecond}, // MinBackoff over MaxBackoff
		{1, 1},
		{1, 3},
	} {
		for _, attempt := range []int{1, 2, 3, 10, 30, 31, 32, 33, 62, 63, 64, 65, 100, math.MaxInt} {
			checkBackoff(t, tc.minB, tc.maxB, attempt)
		}
	}
}

func checkBackoff(t *testing.T, minB, maxB time.Duration, attempt int) {
	t.Helper()
	tr := &Transport{MinBackoff: minB, MaxBackoff: maxB}
	var (
		wait  time.Duration
		retry bool
	)
	func() {
		defer func() {
			if v := recover(); v != nil {
				t.Fatalf("MinBackoff %v, MaxBackoff %v, attempt %d: panic %v", minB, maxB, attempt, v)
			}
		}()
		wait, retry = tr.shouldRetry(nil, errInjected, attempt)
	}()
	if minB <= 0 {
		minB = 100 * time.Millisecond
	}
	if maxB <= 0 {
		maxB = 10 * time.Second
	}
	ceiling := maxB
	if shift := attempt - 1; shift < 63 && minB <= maxB>>shift {
		ceiling = minB << shift
	}
	if !retry || wait <= 0 || wait > maxB || wait < ceiling/2 || wait > ceiling {
		t.Fatalf("MinBackoff %v, MaxBackoff %v, attempt %d: wait %v (retry %v), want within [%v, %v]", minB, maxB, attempt, wait, retry, ceiling/2, ceiling)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type retryCall struct {
	key     string
	attempt int
	status  int
	err     error
	wait    time.Duration
}

// recordRetries sets t.OnRetry to record its calls.
func recordRetries(t *Transport) func() []retryCall {
	var (
		mu    sync.Mutex
		calls []retryCall
	)
	t.OnRetry = func(req *http.Request, attempt int, resp *http.Response, err error, wait time.Duration) {
		c := retryCall{key: req.Header.Get(KeyHeader), attempt: attempt, err: err, wait: wait}
		if resp != nil {
			c.status = resp.StatusCode
		}
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, c)
	}
	return func() []retryCall {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(calls)
	}
}

// TestTransportOnRetry: every retry the transport makes is reported, with
// what failed and how long it waits.
func TestTransportOnRetry(t *testing.T) {
	s := &script{statuses: []int{503, 429, 201}, header: http.Header{"Retry-After": {"0"}}}
	srv := httptest.NewServer(s)
	defer srv.Close()
	var n atomic.Int64
	third := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if n.Add(1) == 3 { // the 3rd attempt fails before it is sent
			r.Body.Close()
			return nil, errInjected
		}
		return srv.Client().Transport.RoundTrip(r)
	})
	tr := &Transport{Base: third, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	calls := recordRetries(tr)
	resp, err := (&http.Client{Transport: tr}).Post(srv.URL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := calls()
	if resp.StatusCode != 201 || len(got) != 3 {
		t.Fatalf("status %d after %d retries reported: %+v", resp.StatusCode, len(got), got)
	}
	for i, want := range []retryCall{{attempt: 1, status: 503}, {attempt: 2, status: 429}, {attempt: 3, err: errInjected}} {
		c := got[i]
		if c.key != s.keys[0] || c.attempt != want.attempt || c.status != want.status || !errors.Is(c.err, want.err) || c.wait <= 0 || c.wait > 20*time.Millisecond {
			t.Errorf("retry %d: %+v, want attempt %d, status %d, err %v, the key %s and a wait", i, c, want.attempt, want.status, want.err, s.keys[0])
		}
	}
	if len(s.keys) != 3 {
		t.Errorf("%d attempts reached the server, want 3", len(s.keys))
	}
}

// TestTransportSeesNetHTTPResend: net/http sends a request with an
// Idempotency-Key again by itself when the reused connection it went out on
// closes before an answer; the transport reports that too.
func TestTransportSeesNetHTTPResend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	keys := make(chan string, 4)
	go func() {
		// The first connection answers a GET, then closes under the POST
		// that reuses it; the second answers the POST.
		for conn := 0; conn < 2; conn++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					break
				}
				_, _ = io.Copy(io.Discard, req.Body)
				if req.Method == http.MethodGet {
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					continue
				}
				keys <- req.Header.Get(KeyHeader)
				if conn == 1 {
					_, _ = io.WriteString(c, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
				}
				break
			}
			c.Close()
		}
	}()
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	tr := &Transport{Base: base, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	calls := recordRetries(tr)
	c := &http.Client{Transport: tr}
	url := "http://" + ln.Addr().String()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	resp, err = c.Post(url, "text/plain", io.NopCloser(strings.NewReader("payload"))) // no GetBody of its own
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("status %d", resp.StatusCode)
	}
	first, second := <-keys, <-keys
	got := calls()
	if first == "" || second != first || len(got) != 1 || !errors.Is(got[0].err, ErrResent) || got[0].attempt != 1 || got[0].key != first {
		t.Errorf("keys %q and %q; retries reported %+v; want one net/http resend of attempt 1 with the same key", first, second, got)
	}
}
