package idempotency_test

import (
	"errors"
	"io"
	"log"
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
			if _, err := direct.Exec(`CREATE TABLE charges (k VARCHAR(255) NOT NULL, amount INTEGER NOT NULL)`); err != nil {
				t.Fatal(err)
			}
			e := env{Backend: b, db: direct}

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
}
