package pgxstore

import (
	"context"
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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/dialects/postgres"
	"github.com/exactlyonce/idempotency/httpadapter"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

type receipt struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

type params struct {
	Amount int `json:"amount"`
}

// charge is a typical fn: one business row through tx, counted in calls.
func charge(key string, amount int, calls *atomic.Int64) func(context.Context, pgx.Tx) (receipt, error) {
	return func(ctx context.Context, tx pgx.Tx) (receipt, error) {
		calls.Add(1)
		if _, err := tx.Exec(ctx, `INSERT INTO charges (k, amount) VALUES ($1, $2)`, key, amount); err != nil {
			return receipt{}, err
		}
		return receipt{ID: "ch_" + key, Amount: amount}, nil
	}
}

// newStore returns a store on pool, scoped to the test. Each test has a
// schema of its own, but advisory locks are the database's: without the
// scope, two tests that use one key would hold each other's lock.
func newStore(t *testing.T, pool *pgxpool.Pool, opts ...idempotency.Option) *Store {
	t.Helper()
	s, err := New(pool, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s.Scope(t.Name())
}

// TestStoreFreshReplayMismatch: the first call runs fn and commits its row
// with the key; the second replays the same value without fn; other params
// with the key are refused.
func TestStoreFreshReplayMismatch(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool)
	ctx := context.Background()
	var calls atomic.Int64
	first, err := idempotency.Run(ctx, s, "k1", params{100}, charge("k1", 100, &calls))
	if err != nil || first.Replayed || first.Value != (receipt{"ch_k1", 100}) {
		t.Fatalf("fresh: %+v, %v", first, err)
	}
	again, err := idempotency.Run(ctx, s, "k1", params{100}, charge("k1", 100, &calls))
	if err != nil || !again.Replayed || again.Value != first.Value {
		t.Fatalf("replay: %+v, %v", again, err)
	}
	if _, err := idempotency.Do(ctx, s, "k1", params{200}, charge("k1", 200, &calls)); !errors.Is(err, idempotency.ErrParamsMismatch) {
		t.Fatalf("other params: %v, want ErrParamsMismatch", err)
	}
	if calls.Load() != 1 || count(t, pool, "charges", "k1") != 1 {
		t.Fatalf("fn ran %d times, %d charges; want 1 and 1", calls.Load(), count(t, pool, "charges", "k1"))
	}
	// Scopes keep the same key apart.
	if r, err := idempotency.Run(ctx, s.Scope("acct_2"), "k1", params{200}, charge("k1", 200, &calls)); err != nil || r.Replayed {
		t.Fatalf("other scope: %+v, %v", r, err)
	}
}

// TestStoreFnError: fn's error rolls its writes back and comes back
// unchanged; a retry runs fn again. A panic rolls back and goes on.
func TestStoreFnError(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool)
	ctx := context.Background()
	var calls atomic.Int64
	boom := errors.New("boom")
	_, err := idempotency.Do(ctx, s, "k", params{1}, func(ctx context.Context, tx pgx.Tx) (receipt, error) {
		if _, err := charge("k", 1, &calls)(ctx, tx); err != nil {
			return receipt{}, err
		}
		return receipt{}, fmt.Errorf("wrapped: %w", boom)
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Do: %v, want fn's error", err)
	}
	if n := count(t, pool, "charges", "k"); n != 0 {
		t.Fatalf("%d charges after fn's error, want 0", n)
	}

	func() {
		defer func() {
			if r := recover(); r != "fn panicked" {
				t.Fatalf("recovered %v, want fn's panic", r)
			}
		}()
		_, _ = idempotency.Do(ctx, s, "k", params{1}, func(ctx context.Context, tx pgx.Tx) (receipt, error) {
			_, _ = charge("k", 1, &calls)(ctx, tx)
			panic("fn panicked")
		})
	}()
	if n := count(t, pool, "charges", "k"); n != 0 {
		t.Fatalf("%d charges after a panic, want 0", n)
	}

	if r, err := idempotency.Run(ctx, s, "k", params{1}, charge("k", 1, &calls)); err != nil || r.Replayed {
		t.Fatalf("retry: %+v, %v; want a fresh run", r, err)
	}
	if calls.Load() != 3 || count(t, pool, "charges", "k") != 1 {
		t.Fatalf("fn ran %d times, want 3, and one charge", calls.Load())
	}
}

// TestStoreFinal: a final failure is stored without fn's writes and
// replayed to retries without fn.
func TestStoreFinal(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool)
	ctx := context.Background()
	var calls atomic.Int64
	declined := func(ctx context.Context, tx pgx.Tx) (receipt, error) {
		if _, err := charge("k", 1, &calls)(ctx, tx); err != nil {
			return receipt{}, err
		}
		return receipt{}, idempotency.FinalCode("card_declined", errors.New("card declined"))
	}
	_, err := idempotency.Do(ctx, s, "k", params{1}, declined)
	var final *idempotency.FinalError
	if !errors.As(err, &final) {
		t.Fatalf("first call: %v, want a FinalError", err)
	}
	_, err = idempotency.Do(ctx, s, "k", params{1}, declined)
	if !errors.As(err, &final) || final.Code != "card_declined" || err.Error() != "card declined" {
		t.Fatalf("replay: %v, want the stored failure", err)
	}
	if calls.Load() != 1 || count(t, pool, "charges", "k") != 0 || count(t, pool, "idempotency_keys", "k") != 1 {
		t.Fatalf("fn ran %d times; want once, no charge, one key", calls.Load())
	}
}

// TestStoreTwins: 64 concurrent calls with one key, on a pool smaller than
// that, run fn once at every isolation level, the store's or the server's
// default, and all return its value.
func TestStoreTwins(t *testing.T) {
	t.Parallel()
	type level struct {
		store  sql.IsolationLevel
		server string // default_transaction_isolation; "" leaves the server's
	}
	levels := []level{
		{store: sql.LevelDefault}, {store: sql.LevelReadCommitted},
		{store: sql.LevelRepeatableRead}, {store: sql.LevelSerializable},
		{store: sql.LevelDefault, server: "repeatable read"},
		{store: sql.LevelDefault, server: "serializable"},
	}
	for _, level := range levels {
		name := level.store.String()
		if level.server != "" {
			name += ", server " + level.server
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool := openPool(t, testDSN(t), func(c *pgxpool.Config) {
				c.MaxConns = 16
				if level.server != "" {
					c.ConnConfig.RuntimeParams["default_transaction_isolation"] = level.server
				}
			})
			s := newStore(t, pool, idempotency.WithIsolation(level.store), idempotency.WithWait(30*time.Second), idempotency.WithMaxRetries(50))
			var calls atomic.Int64
			fn := func(ctx context.Context, tx pgx.Tx) (receipt, error) {
				r, err := charge("twin", 7, &calls)(ctx, tx)
				time.Sleep(5 * time.Millisecond) // let the twins pile up
				return r, err
			}
			results := make([]idempotency.Result[receipt], 64)
			errs := make([]error, 64)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range 64 {
				wg.Go(func() {
					<-start
					results[i], errs[i] = idempotency.Run(context.Background(), s, "twin", params{7}, fn)
				})
			}
			close(start)
			wg.Wait()
			replays := 0
			for i := range 64 {
				if errs[i] != nil || results[i].Value != (receipt{"ch_twin", 7}) {
					t.Fatalf("twin %d: %+v, %v", i, results[i], errs[i])
				}
				if results[i].Replayed {
					replays++
				}
			}
			if calls.Load() != 1 || replays != 63 || count(t, pool, "charges", "twin") != 1 {
				t.Fatalf("fn ran %d times, %d replays, %d charges; want 1, 63, 1", calls.Load(), replays, count(t, pool, "charges", "twin"))
			}
		})
	}
}

// hold runs a call whose fn blocks until release is closed, then returns
// err (nil commits). It returns once fn has started.
func hold(t *testing.T, s *Store, key string, calls *atomic.Int64, err error) (release chan struct{}, done chan error) {
	t.Helper()
	release, done = make(chan struct{}), make(chan error, 1)
	started := make(chan struct{})
	go func() {
		_, e := idempotency.Do(context.Background(), s, key, params{1}, func(ctx context.Context, tx pgx.Tx) (receipt, error) {
			r, e := charge(key, 1, calls)(ctx, tx)
			close(started)
			<-release
			if e == nil {
				e = err
			}
			return r, e
		})
		done <- e
	}()
	<-started
	return release, done
}

// TestStoreWinnerRollsBack: a twin waits for the call that holds its key;
// when that call rolls back, the twin runs fn itself.
func TestStoreWinnerRollsBack(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool, idempotency.WithWait(10*time.Second))
	var calls atomic.Int64
	boom := errors.New("winner failed")
	release, done := hold(t, s, "k", &calls, boom)
	twin := make(chan error, 1)
	var r idempotency.Result[receipt]
	go func() {
		var err error
		r, err = idempotency.Run(context.Background(), s, "k", params{1}, charge("k", 1, &calls))
		twin <- err
	}()
	time.Sleep(50 * time.Millisecond) // the twin is waiting
	close(release)
	if err := <-done; !errors.Is(err, boom) {
		t.Fatalf("winner: %v", err)
	}
	if err := <-twin; err != nil || r.Replayed {
		t.Fatalf("twin: %+v, %v; want it to run fn", r, err)
	}
	if calls.Load() != 2 || count(t, pool, "charges", "k") != 1 {
		t.Fatalf("fn ran %d times, want 2, and 1 charge", calls.Load())
	}
}

// TestStoreWaitBound: a twin that outwaits WithWait gets ErrInProgress and
// stores nothing; the holder then commits.
func TestStoreWaitBound(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool, idempotency.WithWait(50*time.Millisecond))
	var calls atomic.Int64
	release, done := hold(t, s, "k", &calls, nil)
	start := time.Now()
	_, err := idempotency.Do(context.Background(), s, "k", params{1}, charge("k", 1, &calls))
	if !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("twin: %v, want ErrInProgress", err)
	}
	if waited := time.Since(start); waited < 50*time.Millisecond || waited > 5*time.Second {
		t.Fatalf("twin gave up after %v, want about 50ms", waited)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 || count(t, pool, "charges", "k") != 1 {
		t.Fatalf("fn ran %d times, want 1", calls.Load())
	}
}

// TestStoreExpiredAndPrune: a key past its TTL runs again, before any
// pruner has removed it; Prune removes the expired keys.
func TestStoreExpiredAndPrune(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool, idempotency.WithTTL(time.Millisecond), idempotency.WithPruneBatch(2))
	ctx := context.Background()
	var calls atomic.Int64
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		if _, err := idempotency.Do(ctx, s, k, params{1}, charge(k, 1, &calls)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * time.Millisecond)
	if r, err := idempotency.Run(ctx, s, "a", params{1}, charge("a", 1, &calls)); err != nil || r.Replayed {
		t.Fatalf("expired key: %+v, %v; want fn to run again", r, err)
	}
	time.Sleep(5 * time.Millisecond)
	if n, err := s.Prune(ctx); err != nil || n != 5 {
		t.Fatalf("Prune: %d, %v; want 5", n, err)
	}
	if calls.Load() != 6 {
		t.Fatalf("fn ran %d times, want 6", calls.Load())
	}
}

// TestStoreFnCommits: fn that tries to commit or roll back the call's
// transaction gets an error that says why; returned, it rolls back.
func TestStoreFnCommits(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool)
	var calls atomic.Int64
	_, err := idempotency.Do(context.Background(), s, "k", params{1}, func(ctx context.Context, tx pgx.Tx) (receipt, error) {
		if _, err := charge("k", 1, &calls)(ctx, tx); err != nil {
			return receipt{}, err
		}
		return receipt{}, tx.Commit(ctx)
	})
	if !errors.Is(err, errOwned) {
		t.Fatalf("Do: %v, want the store's refusal", err)
	}
	if n := count(t, pool, "charges", "k"); n != 0 {
		t.Fatalf("%d charges, want 0", n)
	}
}

// TestStoreDoTx joins transactions: a caller's pool transaction, where the
// key commits with the caller's commit, and the call's own transaction,
// nested in fn.
func TestStoreDoTx(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool)
	ctx := context.Background()
	var calls atomic.Int64
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := idempotency.DoTx(ctx, tx, s, "outer", params{1}, charge("outer", 1, &calls)); err != nil {
		t.Fatal(err)
	}
	if r, err := idempotency.RunTx(ctx, tx, s, "outer", params{1}, charge("outer", 1, &calls)); err != nil || !r.Replayed {
		t.Fatalf("RunTx again in the same transaction: %+v, %v; want a replay", r, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := idempotency.Run(ctx, s, "outer", params{1}, charge("outer", 1, &calls)); err != nil || !r.Replayed {
		t.Fatalf("Run after the caller's commit: %+v, %v; want a replay", r, err)
	}

	// DoTx inside Do's fn: the inner key commits with the outer one.
	_, err = idempotency.Do(ctx, s, "parent", params{1}, func(ctx context.Context, tx pgx.Tx) (receipt, error) {
		return idempotency.DoTx(ctx, tx, s, "child", params{1}, charge("child", 1, &calls))
	})
	if err != nil {
		t.Fatal(err)
	}
	if count(t, pool, "idempotency_keys", "child") != 1 || count(t, pool, "charges", "child") != 1 || calls.Load() != 2 {
		t.Fatalf("nested DoTx: fn ran %d times", calls.Load())
	}
}

// TestStoreSharesDatabase: a database/sql store (pgx's stdlib driver) and
// the pgx store on one database are one store: keys written by either
// replay on the other, and twins spread over both run fn once.
func TestStoreSharesDatabase(t *testing.T) {
	t.Parallel()
	dsn := testDSN(t)
	pool := openPool(t, dsn, nil)
	sqlStore, err := idempotency.New(backend.Connect(t, dsn))
	if err != nil {
		t.Fatal(err)
	}
	sqlStore = sqlStore.Scope(t.Name())
	pgxStore := newStore(t, pool)
	ctx := context.Background()
	var calls atomic.Int64
	sqlCharge := func(key string) func(context.Context, *sqlx.Tx) (receipt, error) {
		return func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
			calls.Add(1)
			if _, err := tx.ExecContext(ctx, `INSERT INTO charges (k, amount) VALUES ($1, 1)`, key); err != nil {
				return receipt{}, err
			}
			return receipt{ID: "ch_" + key, Amount: 1}, nil
		}
	}

	if _, err := idempotency.Do(ctx, pgxStore, "by-pgx", params{1}, charge("by-pgx", 1, &calls)); err != nil {
		t.Fatal(err)
	}
	if r, err := idempotency.Run(ctx, sqlStore, "by-pgx", params{1}, sqlCharge("by-pgx")); err != nil || !r.Replayed || r.Value != (receipt{"ch_by-pgx", 1}) {
		t.Fatalf("sqlx store on pgx's key: %+v, %v", r, err)
	}
	if _, err := idempotency.Do(ctx, sqlStore, "by-sqlx", params{1}, sqlCharge("by-sqlx")); err != nil {
		t.Fatal(err)
	}
	if r, err := idempotency.Run(ctx, pgxStore, "by-sqlx", params{1}, charge("by-sqlx", 1, &calls)); err != nil || !r.Replayed || r.Value != (receipt{"ch_by-sqlx", 1}) {
		t.Fatalf("pgx store on sqlx's key: %+v, %v", r, err)
	}
	if _, err := idempotency.Do(ctx, sqlStore, "by-pgx", params{2}, sqlCharge("by-pgx")); !errors.Is(err, idempotency.ErrParamsMismatch) {
		t.Fatalf("sqlx store, pgx's key, other params: %v", err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			var err error
			if i%2 == 0 {
				_, err = idempotency.Do(ctx, pgxStore, "twin", params{1}, charge("twin", 1, &calls))
			} else {
				_, err = idempotency.Do(ctx, sqlStore, "twin", params{1}, sqlCharge("twin"))
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 3 || count(t, pool, "charges", "twin") != 1 {
		t.Fatalf("fn ran %d times, want 3 (one per key)", calls.Load())
	}
}

// proxied returns a store whose single connection runs through a wire
// proxy, warmed so that its statements are prepared, and a pool beside it
// that does not go through the proxy.
func proxied(t *testing.T, mode pgx.QueryExecMode, opts ...idempotency.Option) (s *Store, proxy *faultproxy.Proxy, admin *pgxpool.Pool) {
	t.Helper()
	dsn := testDSN(t)
	admin = openPool(t, dsn, nil)
	_, target := testdb.Rehost(t, "postgres", dsn, "")
	proxy = startProxy(t, target)
	dsn, _ = testdb.Rehost(t, "postgres", dsn, proxy.Addr())
	pool := openPool(t, dsn, func(c *pgxpool.Config) {
		c.MaxConns = 1
		// pgxpool pings a connection idle for over a second before handing
		// it out: a round trip of the pool's, not the protocol's.
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
		c.ConnConfig.DefaultQueryExecMode = mode
	})
	s = newStore(t, pool, opts...)
	var calls atomic.Int64
	ctx := context.Background()
	for range 2 { // fresh, then replay: every statement is prepared
		if _, err := idempotency.Do(ctx, s, "warm-up", params{1}, charge("warm-up", 1, &calls)); err != nil {
			t.Fatal(err)
		}
	}
	return s, proxy, admin
}

// TestStoreRoundTrips counts round trips at the wire, on a warm
// connection: a fresh call with one INSERT in fn is 3 ([BEGIN, claim],
// fn's INSERT, [DELETE, INSERT, COMMIT]), as a bare transaction with that
// INSERT is; a replay is 2 ([BEGIN, claim], ROLLBACK). With WithReadFirst a
// replay is 1 (the read) and a fresh call 4. The same holds in pgx's other
// query modes but QueryExecModeDescribeExec, which describes every
// statement before it runs it.
func TestStoreRoundTrips(t *testing.T) {
	t.Parallel()
	readFirst := []idempotency.Option{idempotency.WithReadFirst(true)}
	for _, tc := range []struct {
		name          string
		mode          pgx.QueryExecMode
		opts          []idempotency.Option
		fresh, replay int64
	}{
		{"cache-statement", pgx.QueryExecModeCacheStatement, nil, 3, 2},
		{"cache-statement/read-first", pgx.QueryExecModeCacheStatement, readFirst, 4, 1},
		{"cache-describe", pgx.QueryExecModeCacheDescribe, nil, 3, 2},
		{"exec", pgx.QueryExecModeExec, nil, 3, 2},
		{"simple-protocol", pgx.QueryExecModeSimpleProtocol, nil, 3, 2},
		{"simple-protocol/read-first", pgx.QueryExecModeSimpleProtocol, readFirst, 4, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, proxy, _ := proxied(t, tc.mode, tc.opts...)
			ctx := context.Background()
			var calls atomic.Int64
			before := proxy.Trips()
			if r, err := idempotency.Run(ctx, s, "k", params{1}, charge("k", 1, &calls)); err != nil || r.Replayed {
				t.Fatal(r, err)
			}
			if n := proxy.Trips() - before; n != tc.fresh {
				t.Errorf("fresh call: %d round trips, want %d", n, tc.fresh)
			}
			before = proxy.Trips()
			if r, err := idempotency.Run(ctx, s, "k", params{1}, charge("k", 1, &calls)); err != nil || !r.Replayed {
				t.Fatal(r, err)
			}
			if n := proxy.Trips() - before; n != tc.replay {
				t.Errorf("replay: %d round trips, want %d", n, tc.replay)
			}
		})
	}
}

// TestStoreFailedSaveNeverCommits: a live row for the key appears after the
// claim (inserted from another pool while fn runs), so the save pipeline's
// INSERT fails: its COMMIT never runs, fn's row is not committed, and the
// next attempt replays the row that won. In every query mode pgx sends the
// pipeline in (the simple protocol sends it as one multi-statement query).
func TestStoreFailedSaveNeverCommits(t *testing.T) {
	t.Parallel()
	for name, mode := range map[string]pgx.QueryExecMode{
		"cache-statement": pgx.QueryExecModeCacheStatement,
		"exec":            pgx.QueryExecModeExec,
		"simple-protocol": pgx.QueryExecModeSimpleProtocol,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, proxy, admin := proxied(t, mode)
			ctx := context.Background()
			fp, err := idempotency.Fingerprint(params{1})
			if err != nil {
				t.Fatal(err)
			}
			var calls atomic.Int64
			var trips int64
			r, err := idempotency.Run(ctx, s, "k", params{1}, func(ctx context.Context, tx pgx.Tx) (receipt, error) {
				v, err := charge("k", 1, &calls)(ctx, tx)
				if err != nil {
					return v, err
				}
				if _, err := admin.Exec(ctx, `INSERT INTO idempotency_keys (scope, key, fingerprint, value, expires_at)
VALUES ($1, 'k', $2, '{"id":"rogue","amount":1}', now() + interval '1 hour')`, t.Name(), fp); err != nil {
					return v, err
				}
				trips = proxy.Trips()
				return v, nil
			})
			if err != nil || !r.Replayed || r.Value != (receipt{"rogue", 1}) {
				t.Fatalf("Run: %+v, %v; want the rogue row replayed", r, err)
			}
			// The failed pipeline, its ROLLBACK, and the next attempt's
			// [BEGIN, claim] and ROLLBACK; pgx adds a round trip that
			// deallocates the failed batch's prepared statements.
			t.Logf("round trips after fn: %d", proxy.Trips()-trips)
			if calls.Load() != 1 || count(t, admin, "charges", "k") != 0 {
				t.Fatalf("fn ran %d times and %d charges committed; want 1 and 0", calls.Load(), count(t, admin, "charges", "k"))
			}
		})
	}
}

// TestStoreLostCommit: a connection cut while the save pipeline (with its
// COMMIT) is on the wire gives ErrOutcomeUnknown; a retry with the key
// resolves it: a replay when the server committed, a fresh run when not.
func TestStoreLostCommit(t *testing.T) {
	t.Parallel()
	for _, after := range []bool{true, false} {
		t.Run(map[bool]string{true: "after", false: "before"}[after], func(t *testing.T) {
			t.Parallel()
			s, proxy, admin := proxied(t, pgx.QueryExecModeCacheStatement)
			ctx := context.Background()
			var calls atomic.Int64
			_, err := idempotency.Do(ctx, s, "k", params{1}, func(ctx context.Context, tx pgx.Tx) (receipt, error) {
				v, err := charge("k", 1, &calls)(ctx, tx)
				// The next message on the wire is the save pipeline.
				proxy.Arm(map[bool]faultproxy.Mode{true: faultproxy.CutAfterNext, false: faultproxy.CutBeforeNext}[after])
				return v, err
			})
			if !errors.Is(err, idempotency.ErrOutcomeUnknown) {
				t.Fatalf("Do: %v, want ErrOutcomeUnknown", err)
			}
			var r idempotency.Result[receipt]
			deadline := time.Now().Add(10 * time.Second)
			for {
				// The retry waits (as a twin) while the cut session still
				// holds the key's lock on the server.
				r, err = idempotency.Run(ctx, s, "k", params{1}, charge("k", 1, &calls))
				if !errors.Is(err, idempotency.ErrInProgress) || time.Now().After(deadline) {
					break
				}
			}
			if err != nil || r.Replayed != after || r.Value != (receipt{"ch_k", 1}) {
				t.Fatalf("retry: %+v, %v; want replayed=%v", r, err, after)
			}
			wantCalls := map[bool]int64{true: 1, false: 2}[after]
			if calls.Load() != wantCalls || count(t, admin, "charges", "k") != 1 {
				t.Fatalf("fn ran %d times, want %d; %d charges, want 1", calls.Load(), wantCalls, count(t, admin, "charges", "k"))
			}
		})
	}
}

// TestStoreHTTP: behind httpadapter.MiddlewareFor, a handler gets the
// request's pgx.Tx from TxFrom, with a key (replayed on retry) and without
// one (a plain transaction of the store's, committed by the middleware).
func TestStoreHTTP(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool)
	h := httpadapter.MiddlewareFor(s)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tx := httpadapter.TxFrom[pgx.Tx](r.Context())
		if tx == nil {
			http.Error(w, "no transaction", http.StatusInternalServerError)
			return
		}
		if err := tx.Commit(r.Context()); !errors.Is(err, errOwned) {
			http.Error(w, fmt.Sprintf("Commit: %v", err), http.StatusInternalServerError)
			return
		}
		if _, err := tx.Exec(r.Context(), `INSERT INTO charges (k, amount) VALUES ($1, 1)`, r.Header.Get("Idempotency-Key")); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	post := func(key string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(`{}`))
		if key != "" {
			r.Header.Set("Idempotency-Key", key)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	if w := post("k"); w.Code != http.StatusCreated || w.Header().Get("Idempotent-Replayed") != "" {
		t.Fatalf("first POST: %d %s", w.Code, w.Body)
	}
	if w := post("k"); w.Code != http.StatusCreated || w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retried POST: %d %v", w.Code, w.Header())
	}
	if w := post(""); w.Code != http.StatusCreated {
		t.Fatalf("POST without a key: %d %s", w.Code, w.Body)
	}
	if count(t, pool, "charges", "k") != 1 || count(t, pool, "charges", "") != 1 {
		t.Fatalf("%d keyed and %d keyless charges, want 1 and 1", count(t, pool, "charges", "k"), count(t, pool, "charges", ""))
	}
}

// TestNew: New refuses a nil pool and database/sql's WithDialect, and a
// store on another key table (WithTable) claims through its plain claim
// statement.
func TestNew(t *testing.T) {
	t.Parallel()
	if _, err := New(nil); err == nil || !strings.HasPrefix(err.Error(), "pgxstore: ") {
		t.Fatalf("New(nil): %v", err)
	}
	pool := testPool(t)
	if _, err := New(pool, idempotency.WithDialect(postgres.New(dialects.DefaultTable))); err == nil {
		t.Fatal("New took WithDialect")
	}
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE billing_keys (LIKE idempotency_keys INCLUDING ALL)`); err != nil {
		t.Fatal(err)
	}
	s := newStore(t, pool, idempotency.WithTable("billing_keys"))
	var calls atomic.Int64
	for range 2 {
		if _, err := idempotency.Do(ctx, s, "k", params{1}, charge("k", 1, &calls)); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 || count(t, pool, "billing_keys", "k") != 1 || count(t, pool, "idempotency_keys", "k") != 0 {
		t.Fatalf("fn ran %d times; want once, with the key in billing_keys", calls.Load())
	}
}

// TestStoreSavepointEndsWithCall: a savepoint fn begins on the call's
// transaction works while fn runs, and fails with pgx.ErrTxClosed once the
// call has ended, as the call's transaction does: kept past the call, it
// would run in whatever transaction the next caller has on its connection.
func TestStoreSavepointEndsWithCall(t *testing.T) {
	t.Parallel()
	pool := openPool(t, testDSN(t), func(c *pgxpool.Config) { c.MaxConns = 1 })
	s := newStore(t, pool)
	ctx := context.Background()
	var calls atomic.Int64
	var kept pgx.Tx
	_, err := idempotency.Do(ctx, s, "a", params{1}, func(ctx context.Context, tx pgx.Tx) (receipt, error) {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return receipt{}, err
		}
		r, err := charge("a", 1, &calls)(ctx, sp)
		if err != nil {
			return receipt{}, err
		}
		inner, err := sp.Begin(ctx) // a savepoint in the savepoint
		if err != nil {
			return receipt{}, err
		}
		if err := inner.Rollback(ctx); err != nil {
			return receipt{}, err
		}
		if err := sp.Commit(ctx); err != nil { // RELEASE SAVEPOINT
			return receipt{}, err
		}
		kept, err = tx.Begin(ctx) // left open when fn returns
		return r, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(t, pool, "charges", "a"); n != 1 {
		t.Fatalf("%d charges written through the savepoint, want 1", n)
	}
	if _, err := kept.Exec(ctx, `INSERT INTO charges (k, amount) VALUES ('late', 1)`); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("Exec on a savepoint kept past the call: %v, want pgx.ErrTxClosed", err)
	}
	if _, err := kept.Begin(ctx); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("Begin on a savepoint kept past the call: %v, want pgx.ErrTxClosed", err)
	}
	if err := kept.Rollback(ctx); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("Rollback of a savepoint kept past the call: %v, want pgx.ErrTxClosed", err)
	}
	if n := count(t, pool, "charges", "late"); n != 0 {
		t.Fatalf("%d rows written through a savepoint after its call, want 0", n)
	}
}

// TestInTxRefusals: a keyless transaction (InTx) that fn left with rows
// open, or ended itself, commits nothing, and says so: not an unknown
// outcome, since no COMMIT was sent.
func TestInTxRefusals(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	s := newStore(t, pool)
	ctx := context.Background()

	err := idempotency.InTx(ctx, s, func(ctx context.Context, tx pgx.Tx) error {
		insertCharge(t, tx, "open-rows")
		_, err := tx.Query(ctx, `SELECT generate_series(1, 3)`) // never closed
		return err
	})
	if err == nil || errors.Is(err, idempotency.ErrOutcomeUnknown) {
		t.Errorf("InTx with rows left open: %v; want an error that is not an unknown outcome", err)
	}
	if n := count(t, pool, "charges", "open-rows"); n != 0 {
		t.Errorf("%d rows committed with rows left open, want 0", n)
	}

	err = idempotency.InTx(ctx, s, func(ctx context.Context, tx pgx.Tx) error {
		insertCharge(t, tx, "ended")
		_, err := tx.Exec(ctx, `ROLLBACK`)
		return err
	})
	if !errors.Is(err, idempotency.ErrTransactionEnded) {
		t.Errorf("InTx after fn's own ROLLBACK: %v; want ErrTransactionEnded", err)
	}
	if n := count(t, pool, "charges", "ended"); n != 0 {
		t.Errorf("%d rows committed after fn's own ROLLBACK, want 0", n)
	}
}
