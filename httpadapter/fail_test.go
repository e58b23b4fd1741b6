package httpadapter

import (
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
)

// barrier lets the first attempts of n requests meet: each waits until all
// n have arrived (or a bound passes, so that a broken test fails rather
// than hangs); the attempts after them pass at once.
type barrier struct {
	n       int
	mu      sync.Mutex
	arrived int
	all     chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, all: make(chan struct{})} }

func (b *barrier) wait() {
	b.mu.Lock()
	if b.arrived == b.n {
		b.mu.Unlock()
		return
	}
	b.arrived++
	if b.arrived == b.n {
		close(b.all)
	}
	b.mu.Unlock()
	select {
	case <-b.all:
	case <-time.After(10 * time.Second):
	}
}

// conflicts counts a handler's runs and the errors it handed back.
type conflicts struct {
	runs   atomic.Int64
	mu     sync.Mutex
	failed []error
}

func (c *conflicts) fail(r *http.Request, err error) {
	c.mu.Lock()
	c.failed = append(c.failed, err)
	c.mu.Unlock()
	Fail(r.Context(), err)
}

func (c *conflicts) errs() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed
}

// both sends the two requests at once, each with a key of its own, and
// wants one fresh 201 for each.
func both(t *testing.T, urls [2]string) {
	t.Helper()
	var (
		wg      sync.WaitGroup
		answers [2]response
	)
	for i, url := range urls {
		wg.Go(func() { answers[i] = post(t, nil, url, randomID(), "") })
	}
	wg.Wait()
	for i, a := range answers {
		if a.status != http.StatusCreated || a.replayed() {
			t.Errorf("request %d: %d replayed=%v %s; want one fresh 201", i, a.status, a.replayed(), a.body)
		}
	}
}

// TestFailRetriesASerializationFailure: two handlers at SERIALIZABLE read
// a row, then both update it. Postgres lets the first commit and fails the
// second's UPDATE with 40001; that handler hands the error back with Fail,
// and the middleware has the store run it again, in a new transaction, as
// Do does: each client gets one 201, and each update took effect once.
func TestFailRetriesASerializationFailure(t *testing.T) {
	eachOn(t, []string{"postgres"}, func(t *testing.T, e env) {
		e.Exec(t, `CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)`)
		e.Exec(t, `INSERT INTO accounts VALUES (1, 0)`)
		s := e.store(t, idempotency.WithIsolation(sql.LevelSerializable))
		var c conflicts
		b := newBarrier(2)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.runs.Add(1)
			ctx, tx := r.Context(), Tx(r.Context())
			var balance int
			if err := tx.GetContext(ctx, &balance, `SELECT balance FROM accounts WHERE id = 1`); err != nil {
				c.fail(r, err)
				return
			}
			b.wait() // both have read the row before either writes it
			if _, err := tx.ExecContext(ctx, `UPDATE accounts SET balance = balance + 1 WHERE id = 1`); err != nil {
				c.fail(r, err)
				http.Error(w, err.Error(), http.StatusInternalServerError) // discarded
				return
			}
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, randomID())
		})
		srv := httptest.NewServer(Middleware(s)(h))
		defer srv.Close()
		both(t, [2]string{srv.URL, srv.URL})
		if n := e.Count(t, `SELECT balance FROM accounts WHERE id = 1`); n != 2 {
			t.Errorf("balance %d, want 2", n)
		}
		errs := c.errs()
		if len(errs) == 0 {
			t.Fatal("no handler met a serialization failure")
		}
		for _, err := range errs {
			if !strings.Contains(err.Error(), "40001") && !strings.Contains(err.Error(), "could not serialize") {
				t.Errorf("the handler met %v, want a serialization failure", err)
			}
		}
		if n := c.runs.Load(); n < 3 {
			t.Errorf("the handler ran %d times for 2 requests and %d failures", n, len(errs))
		}
		if k := e.keys(t); k != 2 {
			t.Errorf("%d keys, want 2", k)
		}
	})
}

// TestFailRetriesADeadlock: two handlers update two rows in opposite
// orders; the database breaks the deadlock by failing one of them (1213 on
// MySQL, MariaDB and TiDB, 40P01 on Postgres), whose handler hands the
// error back with Fail: the store runs it again, and each client gets one
// 201. (TiDB's optimistic mode takes no locks: there the loser fails at
// COMMIT, which the store retries by itself.)
func TestFailRetriesADeadlock(t *testing.T) {
	eachOn(t, []string{"postgres", "mysql"}, func(t *testing.T, e env) {
		e.Exec(t, `CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)`)
		e.Exec(t, `INSERT INTO accounts VALUES (1, 0), (2, 0)`)
		var c conflicts
		b := newBarrier(2)
		mux := http.NewServeMux()
		mux.HandleFunc("POST /transfer/{first}/{then}", func(w http.ResponseWriter, r *http.Request) {
			c.runs.Add(1)
			ctx, tx := r.Context(), Tx(r.Context())
			update := tx.Rebind(`UPDATE accounts SET balance = balance + 1 WHERE id = ?`)
			if _, err := tx.ExecContext(ctx, update, r.PathValue("first")); err != nil {
				c.fail(r, err)
				return
			}
			b.wait() // each holds its first row
			if _, err := tx.ExecContext(ctx, update, r.PathValue("then")); err != nil {
				c.fail(r, err)
				return
			}
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, randomID())
		})
		srv := httptest.NewServer(Middleware(e.store(t))(mux))
		defer srv.Close()
		both(t, [2]string{srv.URL + "/transfer/1/2", srv.URL + "/transfer/2/1"})
		if n := e.Count(t, `SELECT sum(balance) FROM accounts`); n != 4 {
			t.Errorf("the balances add up to %d, want 4", n)
		}
		if k := e.keys(t); k != 2 {
			t.Errorf("%d keys, want 2", k)
		}
		errs := c.errs()
		if e.Optimistic() {
			return
		}
		if len(errs) == 0 {
			t.Fatal("no handler met a deadlock")
		}
		for _, err := range errs {
			if !strings.Contains(err.Error(), "1213") && !strings.Contains(err.Error(), "40P01") && !strings.Contains(err.Error(), "deadlock") {
				t.Errorf("the handler met %v, want a deadlock", err)
			}
		}
		if n := c.runs.Load(); n < 3 {
			t.Errorf("the handler ran %d times for 2 requests and %d deadlocks", n, len(errs))
		}
	})
}

// TestFailNotRetryable: an error the store does not retry (here a
// duplicate primary key, on every database, SQLite included) rolls the
// request back once and is answered with ProblemFor's 503 store-failed,
// whatever the handler wrote; with or without a key. A final error is
// stored and replayed as a 422 with its code.
func TestFailNotRetryable(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		e.Exec(t, `CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)`)
		e.Exec(t, `INSERT INTO accounts VALUES (1, 0)`)
		var runs atomic.Int64
		mux := http.NewServeMux()
		mux.HandleFunc("POST /duplicate", func(w http.ResponseWriter, r *http.Request) {
			runs.Add(1)
			if err := insert(r, chargeIn{Ref: "dup", Amount: 1}); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			if _, err := Tx(r.Context()).ExecContext(r.Context(), `INSERT INTO accounts VALUES (1, 0)`); err != nil {
				Fail(r.Context(), err)
			}
			w.WriteHeader(http.StatusCreated) // discarded after Fail
		})
		mux.HandleFunc("POST /declined", func(w http.ResponseWriter, r *http.Request) {
			runs.Add(1)
			if err := insert(r, chargeIn{Ref: "declined", Amount: 1}); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			Fail(r.Context(), idempotency.FinalCode("card_declined", errors.New("the card was declined")))
		})
		srv := httptest.NewServer(Middleware(e.store(t))(mux))
		defer srv.Close()

		for _, key := range []string{"k", ""} {
			runs.Store(0)
			r := post(t, nil, srv.URL+"/duplicate", key, "")
			wantProblem(t, r, http.StatusServiceUnavailable, ProblemStoreFailed)
			if n := runs.Load(); n != 1 {
				t.Errorf("key %q: the handler ran %d times, want 1", key, n)
			}
		}
		if n, k := e.charges(t, "dup"), e.keys(t); n != 0 || k != 0 {
			t.Errorf("failed requests left %d charges and %d keys", n, k)
		}

		runs.Store(0)
		first := post(t, nil, srv.URL+"/declined", "d", "")
		p := wantProblem(t, first, http.StatusUnprocessableEntity, ProblemFinalFailure)
		again := post(t, nil, srv.URL+"/declined", "d", "")
		wantProblem(t, again, http.StatusUnprocessableEntity, ProblemFinalFailure)
		if p.Code != "card_declined" || !again.replayed() || first.replayed() || !bytes.Equal(first.body, again.body) {
			t.Errorf("final failure: code %q, first replayed=%v %s, again replayed=%v %s", p.Code, first.replayed(), first.body, again.replayed(), again.body)
		}
		if strings.Contains(string(first.body), "the card was declined") {
			t.Errorf("the failure's message reached the client: %s", first.body)
		}
		if n, k, ran := e.charges(t, "declined"), e.keys(t), runs.Load(); n != 0 || k != 1 || ran != 1 {
			t.Errorf("a final failure left %d charges and %d keys after %d runs; want 0, 1 and 1", n, k, ran)
		}
	})
}

// TestFailOutsideTheMiddleware: Fail does nothing where the middleware
// does not run the request (a method it passes through); the handler's own
// answer goes out.
func TestFailOutsideTheMiddleware(t *testing.T) {
	e := sqliteEnv(t)
	h := Middleware(e.store(t))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Fail(r.Context(), errors.New("boom"))
		Fail(r.Context(), nil)
		w.WriteHeader(http.StatusAccepted)
	}))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	if w.Code != http.StatusAccepted {
		t.Errorf("GET: %d, want the handler's 202", w.Code)
	}
}
