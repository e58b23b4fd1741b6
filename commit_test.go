package idempotency_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestCommitOutcomeUnknown cuts the connection during COMMIT, once after
// the server received it (it commits) and once before (it does not). Both
// times Do says the outcome is unknown, and a retry with the same key
// resolves it: a replay when it committed, a run when it did not.
//
// It stays out of the conformance suite because the proxy finds COMMIT by
// its text on the wire, as the database/sql drivers send it; a client
// that prepares COMMIT (pgx's own API) is cut at the prepare instead. The
// pgx store proves the same with a proxy that cuts its pipeline.
func TestCommitOutcomeUnknown(t *testing.T) {
	ctx := context.Background()
	for _, b := range testdb.Backends() {
		if b.Kind == "sqlite" {
			continue // no connection to lose
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			direct := conformance.OpenSQL(t, b)
			proxy := conformance.StartProxy(t, direct)
			s := direct.Reopen(t, conformance.Pool{Addr: proxy.Addr()}).NewStore(t)
			for _, c := range []struct {
				mode      faultproxy.Mode
				key       string
				committed bool
			}{
				{faultproxy.CutAfterCommit, "after", true},
				{faultproxy.CutBeforeCommit, "before", false},
			} {
				var calls atomic.Int64
				charge := func(ctx context.Context, tx *sqlx.Tx) (int, error) {
					calls.Add(1)
					return 1, direct.Charge(ctx, tx, c.key, 1)
				}
				charges := func() int { return conformance.Charges(t, direct, c.key) }
				proxy.Arm(c.mode)
				_, err := idempotency.Do(ctx, s, c.key, nil, charge)
				if !errors.Is(err, idempotency.ErrOutcomeUnknown) {
					t.Fatalf("%s: got %v, want ErrOutcomeUnknown", c.key, err)
				}
				// The client learns of the cut before the server has
				// finished the COMMIT it was sent; give the server a moment
				// to settle.
				want := map[bool]int{true: 1, false: 0}[c.committed]
				for i := 0; i < 100 && charges() != want; i++ {
					time.Sleep(20 * time.Millisecond)
				}
				if got := charges(); got != want {
					t.Fatalf("%s: %d charges after the cut, want %d", c.key, got, want)
				}
				r, err := idempotency.Run(ctx, s, c.key, nil, charge)
				if err != nil {
					t.Fatalf("%s: retry: %v", c.key, err)
				}
				if r.Replayed != c.committed || calls.Load() != map[bool]int64{true: 1, false: 2}[c.committed] || charges() != 1 {
					t.Errorf("%s: retry replayed=%v after %d calls with %d charges; want replayed=%v and 1 charge",
						c.key, r.Replayed, calls.Load(), charges(), c.committed)
				}
			}
			if proxy.Cuts() != 2 {
				t.Errorf("the proxy cut %d connections, want 2", proxy.Cuts())
			}
		})
	}
}
