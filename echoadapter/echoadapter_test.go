package echoadapter

import (
	"database/sql"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/httpadapter"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/internal/transfertest"
)

const body = `{"ref":"r1","from":1,"to":2,"amount":5}`

func openBank(t testing.TB, name string) *conformance.SQLEnv {
	t.Helper()
	for _, b := range testdb.Backends() {
		if b.Name == name {
			e := conformance.OpenSQL(t, b)
			transfertest.Setup(t, e.DB)
			return e
		}
	}
	t.Fatalf("no backend %q", name)
	return nil
}

func newStore(t testing.TB, e *conformance.SQLEnv, opts ...idempotency.Option) *idempotency.Store {
	t.Helper()
	s, err := idempotency.New(e.DB, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve serves h at /transfers behind mw and a middleware that sets the
// account from X-Account, as authentication would.
func serve(t testing.TB, mw echo.MiddlewareFunc, h echo.HandlerFunc) string {
	t.Helper()
	e := echo.New()
	e.HideBanner = true
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			c.Set("account", c.Request().Header.Get("X-Account"))
			return next(c)
		}
	})
	e.Use(mw)
	e.POST("/transfers", h)
	e.GET("/transfers", h)
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return srv.URL
}

// transfer moves the money through the request's transaction and answers
// 201; before, if set, runs first in every attempt and may end it with an
// error.
func transfer(postgres bool, before func(c echo.Context) error) echo.HandlerFunc {
	return func(c echo.Context) error {
		var req transfertest.Request
		if err := c.Bind(&req); err != nil {
			return err
		}
		if before != nil {
			if err := before(c); err != nil {
				return err
			}
		}
		if err := transfertest.Move(c.Request().Context(), Tx(c), postgres, req); err != nil {
			return err
		}
		return c.JSON(http.StatusCreated, transfertest.Answer{Ref: req.Ref})
	}
}

func send(t testing.TB, method, url, key, body string, header ...string) transfertest.Reply {
	t.Helper()
	return transfertest.Send(t, method, url, key, body, header...)
}

func post(t testing.TB, url, key, body string, header ...string) transfertest.Reply {
	t.Helper()
	return send(t, http.MethodPost, url, key, body, header...)
}

// TestReturnedErrorNeverCommits reproduces the issue with Echo's own
// wrapper of net/http middleware (echo.WrapMiddleware): a handler that
// moved the money and returns an error commits it, and its client gets an
// empty 200, replayed for good, for Echo answers the error only after the
// middleware has committed. Behind Middleware the error is answered inside
// the attempt: an *echo.HTTPError by Echo's error handler, anything else
// as the middleware's problem; nothing commits, and a retry runs again.
func TestReturnedErrorNeverCommits(t *testing.T) {
	t.Parallel()
	errs := []struct {
		name    string
		err     error
		status  int
		problem string
	}{
		{"HTTPError 409", echo.NewHTTPError(http.StatusConflict, "busy"), 409, `"message":"busy"`},
		{"HTTPError 500", echo.NewHTTPError(http.StatusInternalServerError), 500, ""},
		{"plain error", errors.New("boom"), 503, httpadapter.ProblemStoreFailed},
	}
	for _, name := range []string{"sqlite", "postgres"} {
		for _, tc := range errs {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				var runs atomic.Int64
				h := func(c echo.Context) error {
					runs.Add(1)
					var req transfertest.Request
					if err := c.Bind(&req); err != nil {
						return err
					}
					if err := transfertest.Move(c.Request().Context(), Tx(c), name == "postgres", req); err != nil {
						return err
					}
					return tc.err
				}

				naive := openBank(t, name)
				url := serve(t, echo.WrapMiddleware(httpadapter.Middleware(newStore(t, naive))), h)
				first, again := post(t, url, "k1", body), post(t, url, "k1", body)
				if first.Status != 200 || first.Body != "" || !again.Replayed() || naive.Count(t, `SELECT COUNT(*) FROM transfers`) != 1 {
					t.Fatalf("echo.WrapMiddleware: %d %q then replayed=%v, %d transfers; the issue's committed empty 200 was expected",
						first.Status, first.Body, again.Replayed(), naive.Count(t, `SELECT COUNT(*) FROM transfers`))
				}

				b := openBank(t, name)
				runs.Store(0)
				url = serve(t, Middleware(newStore(t, b)), h)
				for i := range 2 {
					r := post(t, url, "k1", body)
					if r.Status != tc.status || r.Replayed() || !strings.Contains(r.Body, tc.problem) {
						t.Fatalf("try %d: %d replayed=%v %q, want %d with %s", i, r.Status, r.Replayed(), r.Body, tc.status, tc.problem)
					}
				}
				if n, k := b.Count(t, `SELECT COUNT(*) FROM transfers`), b.Count(t, `SELECT COUNT(*) FROM idempotency_keys`); n != 0 || k != 0 || runs.Load() != 2 {
					t.Fatalf("%d transfers, %d keys, %d runs; want none committed and a run per try", n, k, runs.Load())
				}
			})
		}
	}
}

// TestSerializationFailureRunsAgain: a handler that returns the database's
// serialization failure runs again, in a new transaction, and the client
// gets the second attempt's 201.
func TestSerializationFailureRunsAgain(t *testing.T) {
	t.Parallel()
	b := openBank(t, "postgres")
	var runs atomic.Int64
	url := serve(t, Middleware(newStore(t, b)), transfer(true, func(c echo.Context) error {
		if runs.Add(1) > 1 {
			return nil
		}
		_, err := Tx(c).ExecContext(c.Request().Context(), `DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$`)
		return err
	}))
	r := post(t, url, "k1", body)
	if r.Status != 201 || !strings.Contains(r.Body, `"ref":"r1"`) || runs.Load() != 2 {
		t.Fatalf("%d %q after %d runs; want 201 naming r1 after 2", r.Status, r.Body, runs.Load())
	}
	if n := b.Count(t, `SELECT COUNT(*) FROM transfers`); n != 1 {
		t.Fatalf("%d transfers, want 1", n)
	}
}

// TestBehavesAsTheMiddleware: keys, scopes from the echo.Context, replays,
// problems, limits, and requests passed through.
func TestBehavesAsTheMiddleware(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := openBank(t, name)
			held, release := make(chan struct{}), make(chan struct{})
			url := serve(t, Middleware(newStore(t, b, idempotency.WithWait(50*time.Millisecond)),
				WithScope(func(c echo.Context) string { return c.Get("account").(string) }),
				httpadapter.WithMaxRequestBytes(256),
			), transfer(name == "postgres", func(c echo.Context) error {
				if c.Request().Method == http.MethodGet {
					return echo.NewHTTPError(http.StatusTeapot, "passed through")
				}
				if Tx(c) == nil {
					t.Error("Tx(c) is nil in a POST behind Middleware")
				}
				if c.Request().Header.Get("X-Hold") != "" {
					held <- struct{}{}
					<-release
				}
				return nil
			}))
			acct := func(a string) []string { return []string{"X-Account", a} }

			transfertest.CheckAsMiddleware(t, url, body, acct(""), held, release)

			if r := post(t, url, "", `{"ref":"nokey","from":1,"to":2,"amount":1}`, acct("alice")...); r.Status != 201 {
				t.Errorf("without a key: %d %q", r.Status, r.Body)
			}
			// A GET passes through, and its error reaches Echo as usual.
			if r := send(t, http.MethodGet, url, "k5", "", acct("alice")...); r.Status != http.StatusTeapot || !strings.Contains(r.Body, "passed through") {
				t.Errorf("GET: %d %q, want Echo's 418", r.Status, r.Body)
			}
			if n := b.Count(t, `SELECT COUNT(*) FROM transfers`); n != 4 {
				t.Errorf("%d transfers, want 4 (alice's, bob's, the held one, the keyless one)", n)
			}
		})
	}
}

// TestFaultMix is ginadapter's TestFaultMix through Echo: 600 transfers
// under HTTP faults, SERIALIZABLE and cut database connections; no 2xx
// without its transfer, none moved twice, balances that add up. The
// handler returns its database errors, as Echo handlers do.
// echo.WrapMiddleware runs the same load for the record: on Postgres a
// returned database error leaves the transaction aborted, so the
// middleware's save fails too and the client is told to retry; its empty
// 200s come from the errors TestReturnedErrorNeverCommits returns.
func TestFaultMix(t *testing.T) {
	if testing.Short() {
		t.Skip("600 requests under faults")
	}
	for _, adapter := range []string{"Middleware", "WrapMiddleware"} {
		t.Run(adapter, func(t *testing.T) {
			b := openBank(t, "postgres")
			proxy, err := faultproxy.Start(b.Server())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = proxy.Close() })
			cut := b.Reopen(t, conformance.Pool{Addr: proxy.Addr()}).(*conformance.SQLEnv)
			store := newStore(t, cut, idempotency.WithIsolation(sql.LevelSerializable))
			mw := Middleware(store, httpadapter.WithRetryAfter(0))
			if adapter == "WrapMiddleware" {
				mw = echo.WrapMiddleware(httpadapter.Middleware(store, httpadapter.WithRetryAfter(0)))
			}
			url := serve(t, mw, transfer(true, nil))
			proxy.SetChaos(&faultproxy.Chaos{CutProb: 0.003, CommitProb: 0.03})
			out := transfertest.Drive(t, url, transfertest.Load{Clients: 20, PerClient: 30, HTTPFaults: true})
			proxy.SetChaos(nil)
			tally := transfertest.Check(t, b.DB, out)
			st := proxy.Stats()
			t.Logf("%s: %v (faults: %d at HTTP, %d database connections cut, %d at COMMIT)", adapter, tally,
				out.Faults, st.CutsMid, st.CommitCutsAfter+st.CommitCutsBefore)
			if adapter == "WrapMiddleware" {
				return // for the record
			}
			if tally.Unbacked2xx != 0 || tally.Duplicated != 0 || !tally.Balanced {
				t.Fatalf("%v", tally)
			}
			if tally.OK < tally.Requests/2 {
				t.Fatalf("only %d of %d transfers succeeded: the load says little", tally.OK, tally.Requests)
			}
		})
	}
}
