package idempotency_test

import (
	"errors"
	"fmt"
	"io"
	"log"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/migrations"
)

// TestCommitOutcomeUnknown cuts the connection during COMMIT, once after
// the server received it (it commits) and once before (it does not). Both
// times Do says the outcome is unknown, and a retry with the same key
// resolves it: a replay when it committed, a run when it did not.
func TestCommitOutcomeUnknown(t *testing.T) {
	eachThroughProxy(t, func(t *testing.T, e env, proxy *faultproxy.Proxy, db *sqlx.DB) {
		s, err := idempotency.New(db)
		if err != nil {
			t.Fatal(err)
		}

		for _, c := range []struct {
			mode      faultproxy.Mode
			key       string
			committed bool
		}{
			{faultproxy.CutAfterCommit, "after", true},
			{faultproxy.CutBeforeCommit, "before", false},
		} {
			var calls atomic.Int64
			proxy.Arm(c.mode)
			_, err := idempotency.Do(ctx, s, c.key, nil, charge(c.key, 1, &calls))
			if !errors.Is(err, idempotency.ErrOutcomeUnknown) {
				t.Fatalf("%s: got %v, want ErrOutcomeUnknown", c.key, err)
			}
			// The client learns of the cut before the server has finished
			// the COMMIT it was sent; give the server a moment to settle.
			want := map[bool]int{true: 1, false: 0}[c.committed]
			for i := 0; i < 100 && e.charges(t, c.key) != want; i++ {
				time.Sleep(20 * time.Millisecond)
			}
			if got := e.charges(t, c.key); got != want {
				t.Fatalf("%s: %d charges after the cut, want %d", c.key, got, want)
			}
			r, err := idempotency.Run(ctx, s, c.key, nil, charge(c.key, 1, &calls))
			if err != nil {
				t.Fatalf("%s: retry: %v", c.key, err)
			}
			if r.Replayed != c.committed || calls.Load() != map[bool]int64{true: 1, false: 2}[c.committed] || e.charges(t, c.key) != 1 {
				t.Errorf("%s: retry replayed=%v after %d calls with %d charges; want replayed=%v and 1 charge",
					c.key, r.Replayed, calls.Load(), e.charges(t, c.key), c.committed)
			}
		}
		if proxy.Cuts() != 2 {
			t.Errorf("the proxy cut %d connections, want 2", proxy.Cuts())
		}
	})
}

// TestLostConnectionsAreRetried cuts connections at random. When the cut
// breaks one of Do's own statements before COMMIT, the attempt runs again on
// another connection; callers see success, ErrOutcomeUnknown when the cut hit
// the COMMIT, or fn's own error (unchanged) when it hit fn's statement. After
// one more try every key has exactly one charge.
func TestLostConnectionsAreRetried(t *testing.T) {
	eachThroughProxy(t, func(t *testing.T, e env, proxy *faultproxy.Proxy, db *sqlx.DB) {
		s, err := idempotency.New(db, idempotency.WithMaxRetries(20))
		if err != nil {
			t.Fatal(err)
		}
		proxy.SetChaos(&faultproxy.Chaos{CutProb: 0.05})
		var calls atomic.Int64
		unknown, fnErrors := 0, 0
		const n = 60
		for i := range n {
			key := fmt.Sprintf("lost-%d", i)
			_, err := idempotency.Do(ctx, s, key, nil, charge(key, 1, &calls))
			switch {
			case errors.Is(err, idempotency.ErrOutcomeUnknown):
				unknown++
			case err != nil && strings.HasPrefix(err.Error(), "idempotency:"):
				t.Errorf("%s: %v; a broken connection before COMMIT should have been retried", key, err)
			case err != nil:
				fnErrors++
			}
		}
		proxy.SetChaos(nil)
		for i := range n {
			key := fmt.Sprintf("lost-%d", i)
			if _, err := idempotency.Do(ctx, s, key, nil, charge(key, 1, &calls)); err != nil {
				t.Errorf("%s: final try: %v", key, err)
			}
			if got := e.charges(t, key); got != 1 {
				t.Errorf("%s: %d charges, want 1", key, got)
			}
		}
		st := proxy.Stats()
		if st.CutsMid == 0 {
			t.Error("the proxy cut nothing; the test proved nothing")
		}
		t.Logf("%d calls, %d connections cut mid-stream, %d outcomes unknown, %d errors from fn's own statements, fn ran %d times",
			n, st.CutsMid, unknown, fnErrors, calls.Load())
	})
}

// eachThroughProxy runs test on every server backend with a migrated
// database that has the charges table, reached through a fault proxy: e
// talks to the database directly, db through the proxy.
func eachThroughProxy(t *testing.T, test func(t *testing.T, e env, proxy *faultproxy.Proxy, db *sqlx.DB)) {
	_ = mysql.SetLogger(log.New(io.Discard, "", 0)) // the driver logs the cut connections
	for _, b := range testdb.Backends() {
		if b.Kind == "sqlite" {
			continue // no connection to lose
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			dsn := b.DSN(t)
			direct, err := sqlx.Open(b.Driver, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer direct.Close()
			if err := migrations.Up(ctx, direct); err != nil {
				t.Fatal(err)
			}
			_, target := testdb.Rehost(t, b.Kind, dsn, "")
			proxy, err := faultproxy.Start(target)
			if err != nil {
				t.Fatal(err)
			}
			defer proxy.Close()
			proxied, _ := testdb.Rehost(t, b.Kind, dsn, proxy.Addr())
			db, err := sqlx.Open(b.Driver, proxied)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			test(t, newEnv(t, b, direct), proxy, db)
		})
	}
}
