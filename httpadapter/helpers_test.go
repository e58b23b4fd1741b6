package httpadapter

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// hooks lets a test run code between a handler's return and its commit, for
// the requests that carry its X-Hook header (tests run in parallel).
var hooks sync.Map

func init() {
	testHookBeforeCommit = func(r *http.Request) {
		if f, ok := hooks.Load(r.Header.Get("X-Hook")); ok {
			f.(func(*http.Request))(r)
		}
	}
}

// env is one backend's database with the charges table (testdb.Charges)
// that the test API writes to, so tests can count effects: the harness of
// the conformance suite.
type env struct{ *conformance.SQLEnv }

// each runs test against every backend, in parallel.
func each(t *testing.T, test func(t *testing.T, e env)) {
	t.Helper()
	eachOn(t, nil, test)
}

// eachOn is each on the backends of kinds ("postgres", "mysql",
// "sqlite") alone, or on all of them when kinds is nil: no database is made
// for a test that does not apply to it.
func eachOn(t *testing.T, kinds []string, test func(t *testing.T, e env)) {
	t.Helper()
	for _, b := range testdb.Backends() {
		if kinds != nil && !slices.Contains(kinds, b.Kind) {
			continue
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			test(t, env{conformance.OpenSQL(t, b)})
		})
	}
}

func (e env) store(t testing.TB, opts ...idempotency.Option) *idempotency.Store {
	t.Helper()
	return e.NewStore(t, opts...)
}

// server serves the test API behind the middleware; wrap, if given, goes
// around the middleware.
func (e env) server(t *testing.T, s *idempotency.Store, opts []Option, wrap func(http.Handler) http.Handler) *httptest.Server {
	t.Helper()
	h := Middleware(s, opts...)(api())
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func (e env) charges(t testing.TB, ref string) int {
	t.Helper()
	return conformance.Charges(t, e, ref)
}

func (e env) keys(t testing.TB) int {
	t.Helper()
	return conformance.Keys(t, e)
}

type chargeIn struct {
	Ref    string `json:"ref"`
	Amount int    `json:"amount"`
}

// insert is the API's business write, through the request's transaction.
func insert(r *http.Request, in chargeIn) error {
	tx := Tx(r.Context())
	if tx == nil {
		return fmt.Errorf("no transaction for %s %s", r.Method, r.URL.Path)
	}
	_, err := tx.ExecContext(r.Context(), tx.Rebind(`INSERT INTO charges (ref, amount) VALUES (?, ?)`), in.Ref, in.Amount)
	return err
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "ch_" + hex.EncodeToString(b)
}

// api is the handler under test: a charges API on Go 1.22 patterns, with
// routes that misbehave on purpose. Its answers carry a random id, so a
// replay can be told from a second run.
func api() http.Handler {
	mux := http.NewServeMux()
	decode := func(w http.ResponseWriter, r *http.Request) (chargeIn, bool) {
		var in chargeIn
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, "bad json: "+err.Error(), http.StatusBadRequest)
			return in, false
		}
		if err := insert(r, in); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return in, false
		}
		return in, true
	}
	mux.HandleFunc("POST /accounts/{acct}/charges", func(w http.ResponseWriter, r *http.Request) {
		in, ok := decode(w, r)
		if !ok {
			return
		}
		if in.Amount <= 0 {
			// A validation error after the write: not stored by default,
			// so the write rolls back and a corrected retry may run.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"amount must be positive","nonce":%q}`, randomID())
			return
		}
		id := randomID()
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Location", "/accounts/"+r.PathValue("acct")+"/charges/"+id)
		h.Set("Set-Cookie", "session=secret-of-"+r.PathValue("acct"))
		h.Set("X-Not-Replayed", "1")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]any{"id": id, "ref": in.Ref, "amount": in.Amount, "account": r.PathValue("acct")})
	})
	mux.HandleFunc("GET /accounts/{acct}/charges/{id}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tx=%v", Tx(r.Context()) != nil)
	})
	mux.HandleFunc("PUT /accounts/{acct}/charges/{id}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tx=%v", Tx(r.Context()) != nil)
	})
	mux.HandleFunc("POST /fail", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := decode(w, r); ok {
			http.Error(w, "upstream down "+randomID(), http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("POST /status/{code}", func(w http.ResponseWriter, r *http.Request) {
		// Answers the status its path names, after its business write.
		if _, ok := decode(w, r); ok {
			code, _ := strconv.Atoi(r.PathValue("code"))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			fmt.Fprintf(w, `{"status":%d,"nonce":%q}`, code, randomID())
		}
	})
	mux.HandleFunc("POST /form", func(w http.ResponseWriter, r *http.Request) {
		// A form handler: what it acts on is r.PostForm (and an uploaded
		// file's size), however the form was parsed.
		if err := r.ParseMultipartForm(1 << 20); err != nil && !errors.Is(err, http.ErrNotMultipart) {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		amount, _ := strconv.Atoi(r.PostFormValue("amount"))
		if _, fh, err := r.FormFile("receipt"); err == nil {
			amount += int(fh.Size)
		}
		in := chargeIn{Ref: r.FormValue("to"), Amount: amount}
		if err := insert(r, in); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]any{"id": randomID(), "to": in.Ref, "amount": in.Amount})
	})
	mux.HandleFunc("POST /gzip", func(w http.ResponseWriter, r *http.Request) {
		// A compressed, described answer: its headers say how to read it.
		if in, ok := decode(w, r); ok {
			h := w.Header()
			h.Set("Content-Type", "application/json")
			h.Set("Content-Encoding", "gzip")
			h.Set("Content-Language", "fr")
			h.Set("Content-Disposition", `attachment; filename="recu.json"`)
			h.Set("Content-Location", "/receipts/"+in.Ref)
			h.Set("Vary", "Accept-Encoding")
			w.WriteHeader(http.StatusCreated)
			zw := gzip.NewWriter(w)
			fmt.Fprintf(zw, `{"ref":%q,"id":%q}`, in.Ref, randomID())
			_ = zw.Close()
		}
	})
	mux.HandleFunc("POST /rollback", func(w http.ResponseWriter, r *http.Request) {
		// Ends its transaction, as InnoDB does on a deadlock and SQLite on
		// a full disk, ignores that, and writes on: outside any transaction.
		if _, err := Tx(r.Context()).ExecContext(r.Context(), "ROLLBACK"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_ = insert(r, chargeIn{Ref: "escaped", Amount: 1})
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("POST /panic", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := decode(w, r); ok {
			panic("boom")
		}
	})
	mux.HandleFunc("POST /big", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := decode(w, r); ok {
			w.Header().Set("Content-Type", "text/plain")
			for range 64 {
				if _, err := w.Write(bytes.Repeat([]byte("x"), 1024)); err != nil {
					return // ErrResponseTooLarge: stop early
				}
			}
		}
	})
	mux.HandleFunc("POST /stream", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := decode(w, r); ok {
			fmt.Fprintln(w, "part 1")
			if err := http.NewResponseController(w).Flush(); err == nil {
				panic("Flush through ResponseController did not report ErrStreaming")
			}
			fmt.Fprintln(w, "part 2")
		}
	})
	mux.HandleFunc("POST /gate", func(w http.ResponseWriter, r *http.Request) {
		// Waits for the test: the gate named by X-Gate.
		if _, ok := decode(w, r); ok {
			g, _ := gates.Load(r.Header.Get("X-Gate"))
			g.(*gate).pass(r.Context())
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, randomID())
		}
	})
	return mux
}

// gate lets a test hold a handler: entered closes when the handler
// arrives, and the handler waits for open (or, with onCancel, for the
// request's context to end).
type gate struct {
	entered  chan struct{}
	open     chan struct{}
	onCancel bool
}

var gates sync.Map

func newGate(t *testing.T, onCancel bool) (string, *gate) {
	g := &gate{entered: make(chan struct{}), open: make(chan struct{}), onCancel: onCancel}
	name := randomID()
	gates.Store(name, g)
	t.Cleanup(func() { gates.Delete(name) })
	return name, g
}

// holdGate sends a request with key and body to url (a /gate route) through
// a new gate, and returns once its handler waits there: the gate's name,
// the gate (close open to let the handler go on) and the response to come.
func holdGate(t *testing.T, url, key, body string) (string, *gate, <-chan response) {
	t.Helper()
	name, g := newGate(t, false)
	done := make(chan response, 1)
	go func() {
		r, _ := send(context.Background(), nil, url, key, body, "X-Gate", name)
		done <- r
	}()
	<-g.entered
	return name, g, done
}

func (g *gate) pass(ctx context.Context) {
	close(g.entered)
	if g.onCancel {
		<-ctx.Done()
		return
	}
	<-g.open
}

// response is a read response.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) replayed() bool { return r.header.Get(ReplayedHeader) == "true" }

// post sends a POST with a key (none if key is "") and JSON body.
func post(t testing.TB, c *http.Client, url, key, body string, header ...string) response {
	t.Helper()
	resp, err := send(context.Background(), c, url, key, body, header...)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func send(ctx context.Context, c *http.Client, url, key, body string, header ...string) (response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	if key != "" {
		req.Header.Set(KeyHeader, key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}, err
}

// wantProblem checks that r is an RFC 9457 problem of the given type and status.
func wantProblem(t testing.TB, r response, status int, typ string) Problem {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != ProblemContentType {
		t.Errorf("Content-Type %q, want %q", ct, ProblemContentType)
	}
	var p Problem
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("problem body %s: %v", r.body, err)
	}
	if p.Type != typ || p.Status != status || p.Title == "" || len(p.Detail) < 20 {
		t.Errorf("problem %+v, want type %s, status %d, a title and a detail", p, typ, status)
	}
	return p
}

// quietLog silences the test server's log of deliberately dropped
// connections.
func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }

// sqliteEnv returns an env on SQLite, for tests that need only one backend.
func sqliteEnv(t testing.TB) env {
	t.Helper()
	return env{conformance.OpenSQL(t, testdb.Backends()[0])}
}

// shortBusy returns e, or on SQLite an env on a new database whose
// busy_timeout is short: there a twin waits in BEGIN IMMEDIATE for the
// driver's busy_timeout (10s in testdb's DSN), not for WithWait.
func (e env) shortBusy(t testing.TB) env {
	t.Helper()
	if e.Kind != "sqlite" {
		return e
	}
	dsn := strings.Replace(testdb.SQLiteDSN(filepath.Join(t.TempDir(), "busy.db")), "busy_timeout(10000)", "busy_timeout(100)", 1)
	return env{conformance.OpenSQLDSN(t, e.Backend, dsn)}
}

// logBuffer collects what a logger writes, for tests that check a log line.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }
