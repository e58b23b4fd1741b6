package idempotency_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// env is one backend's database with a business table, charges, that fn
// writes to, so tests can count effects.
type env struct {
	testdb.Backend
	db *sqlx.DB
}

// each runs test against every backend, in parallel.
func each(t *testing.T, test func(t *testing.T, e env)) {
	t.Helper()
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			test(t, newEnv(t, b, b.Open(t)))
		})
	}
}

// newEnv creates the charges table in db, a migrated database of b's.
func newEnv(t *testing.T, b testdb.Backend, db *sqlx.DB) env {
	t.Helper()
	if _, err := db.Exec(`CREATE TABLE charges (k VARCHAR(255) NOT NULL, amount INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return env{Backend: b, db: db}
}

func (e env) store(t *testing.T, opts ...idempotency.Option) *idempotency.Store {
	t.Helper()
	s, err := idempotency.New(e.db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// charge is a typical fn: one business row through tx.
func charge(key string, amount int, calls *atomic.Int64) func(context.Context, *sqlx.Tx) (receipt, error) {
	return func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
		calls.Add(1)
		if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO charges (k, amount) VALUES (?, ?)`), key, amount); err != nil {
			return receipt{}, err
		}
		return receipt{ID: "ch_" + key, Amount: amount, At: time.Now().UTC()}, nil
	}
}

type receipt struct {
	ID     string    `json:"id"`
	Amount int       `json:"amount"`
	At     time.Time `json:"at"`
}

func (e env) charges(t *testing.T, key string) int {
	t.Helper()
	var n int
	if err := e.db.Get(&n, e.db.Rebind(`SELECT COUNT(*) FROM charges WHERE k = ?`), key); err != nil {
		t.Fatal(err)
	}
	return n
}

func (e env) keys(t *testing.T) int {
	t.Helper()
	var n int
	if err := e.db.Get(&n, `SELECT COUNT(*) FROM idempotency_keys`); err != nil {
		t.Fatal(err)
	}
	return n
}

var ctx = context.Background()

func TestFreshThenReplay(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		first, err := idempotency.Run(ctx, s, "k1", map[string]any{"amount": 100}, charge("k1", 100, &calls))
		if err != nil {
			t.Fatal(err)
		}
		if first.Replayed {
			t.Error("first call reported a replay")
		}
		again, err := idempotency.Run(ctx, s, "k1", map[string]any{"amount": 100}, charge("k1", 100, &calls))
		if err != nil {
			t.Fatal(err)
		}
		if !again.Replayed {
			t.Error("second call was not a replay")
		}
		if again.Value != first.Value {
			t.Errorf("replayed %+v, first answer was %+v", again.Value, first.Value)
		}
		if calls.Load() != 1 || e.charges(t, "k1") != 1 {
			t.Errorf("fn ran %d times, %d charges; want 1 and 1", calls.Load(), e.charges(t, "k1"))
		}
	})
}

func TestParamsMismatch(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		if _, err := idempotency.Do(ctx, s, "k", map[string]int{"amount": 1}, charge("k", 1, &calls)); err != nil {
			t.Fatal(err)
		}
		_, err := idempotency.Do(ctx, s, "k", map[string]int{"amount": 2}, charge("k", 2, &calls))
		if !errors.Is(err, idempotency.ErrParamsMismatch) {
			t.Fatalf("got %v, want ErrParamsMismatch", err)
		}
		if calls.Load() != 1 || e.charges(t, "k") != 1 {
			t.Errorf("fn ran %d times; want 1", calls.Load())
		}
	})
}

var errDeclined = errors.New("card declined")

func TestFnErrorStoresNothing(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
			if _, err := charge("k", 1, &calls)(ctx, tx); err != nil {
				return receipt{}, err
			}
			return receipt{}, fmt.Errorf("wrapped: %w", errDeclined)
		})
		if !errors.Is(err, errDeclined) || err.Error() != "wrapped: card declined" {
			t.Fatalf("got %v, want fn's error unchanged", err)
		}
		if e.charges(t, "k") != 0 || e.keys(t) != 0 {
			t.Fatal("a failed call left rows behind")
		}
		// A retry runs fn again.
		if _, err := idempotency.Do(ctx, s, "k", nil, charge("k", 1, &calls)); err != nil {
			t.Fatal(err)
		}
		if calls.Load() != 2 || e.charges(t, "k") != 1 {
			t.Errorf("fn ran %d times, %d charges; want 2 and 1", calls.Load(), e.charges(t, "k"))
		}
	})
}

func TestPanicRollsBack(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		func() {
			defer func() {
				if r := recover(); r != "boom" {
					t.Errorf("recovered %v, want the panic to pass through", r)
				}
			}()
			_, _ = idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
				_, _ = charge("k", 1, &calls)(ctx, tx)
				panic("boom")
			})
		}()
		if e.charges(t, "k") != 0 || e.keys(t) != 0 {
			t.Fatal("a panicking call left rows behind")
		}
		if _, err := idempotency.Do(ctx, s, "k", nil, charge("k", 1, &calls)); err != nil {
			t.Fatalf("after a panic the key is not free: %v", err)
		}
	})
}

func TestCancelledContext(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		cctx, cancel := context.WithCancel(ctx)
		_, err := idempotency.Do(cctx, s, "k", nil, func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
			r, err := charge("k", 1, &calls)(ctx, tx)
			cancel() // the caller gives up while fn finishes
			return r, err
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if e.charges(t, "k") != 0 || e.keys(t) != 0 {
			t.Fatal("a cancelled call left rows behind")
		}
		_, err = idempotency.Do(cctx, s, "k2", nil, charge("k2", 1, &calls))
		if !errors.Is(err, context.Canceled) || calls.Load() != 1 {
			t.Fatalf("a call with a cancelled context: %v after %d calls; want context.Canceled without calling fn", err, calls.Load())
		}
	})
}

func TestFinalFailureIsRemembered(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		declined := func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
			if _, err := charge("k", 1, &calls)(ctx, tx); err != nil {
				return receipt{}, err
			}
			return receipt{}, &idempotency.FinalError{Code: "card_declined", Err: errDeclined}
		}
		_, err := idempotency.Do(ctx, s, "k", "p", declined)
		var fe *idempotency.FinalError
		if !errors.As(err, &fe) || fe.Code != "card_declined" || !errors.Is(err, errDeclined) {
			t.Fatalf("first call: %v, want the final error itself", err)
		}
		r, err := idempotency.Run(ctx, s, "k", "p", declined)
		if !errors.As(err, &fe) || fe.Code != "card_declined" || err.Error() != errDeclined.Error() || !r.Replayed {
			t.Fatalf("retry: %v (replayed %v), want the same failure replayed", err, r.Replayed)
		}
		if calls.Load() != 1 {
			t.Errorf("fn ran %d times; want 1", calls.Load())
		}
		if e.charges(t, "k") != 0 || e.keys(t) != 1 {
			t.Errorf("%d charges and %d keys; want the business write undone and the failure stored", e.charges(t, "k"), e.keys(t))
		}
	})
}

func TestExpiredKeyRunsAgain(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t, idempotency.WithTTL(200*time.Millisecond))
		var calls atomic.Int64
		if _, err := idempotency.Do(ctx, s, "k", nil, charge("k", 1, &calls)); err != nil {
			t.Fatal(err)
		}
		if r, err := idempotency.Run(ctx, s, "k", nil, charge("k", 1, &calls)); err != nil || !r.Replayed {
			t.Fatalf("within the TTL: %v, replayed %v", err, r.Replayed)
		}
		time.Sleep(400 * time.Millisecond)
		r, err := idempotency.Run(ctx, s, "k", "other params are fine once expired", charge("k", 1, &calls))
		if err != nil || r.Replayed {
			t.Fatalf("after the TTL: %v, replayed %v; want a fresh run", err, r.Replayed)
		}
		if calls.Load() != 2 || e.keys(t) != 1 {
			t.Errorf("fn ran %d times, %d keys; want 2 and 1", calls.Load(), e.keys(t))
		}
	})
}

func TestBadInput(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		fn := charge("k", 1, &calls)
		cases := []struct {
			name   string
			store  *idempotency.Store
			key    string
			params any
			want   error
			text   string
		}{
			{"empty key", s, "", nil, idempotency.ErrInvalidKey, "the key is empty"},
			{"256-byte key", s, strings.Repeat("k", 256), nil, idempotency.ErrInvalidKey, "256 bytes"},
			{"control character", s, "a\nb", nil, idempotency.ErrInvalidKey, "not printable ASCII"},
			{"non-ASCII", s, "clé", nil, idempotency.ErrInvalidKey, "not printable ASCII"},
			{"long scope", s.Scope(strings.Repeat("s", 256)), "k", nil, idempotency.ErrInvalidKey, "scope"},
			{"channel params", s, "k", make(chan int), nil, "params cannot be encoded as JSON"},
			{"NaN params", s, "k", math.NaN(), nil, "params cannot be encoded as JSON"},
			{"invalid UTF-8 params", s, "k", map[string]string{"card": "\xff"}, nil, "not valid UTF-8"},
			{"nil store", nil, "k", nil, nil, "nil *Store"},
		}
		for _, c := range cases {
			_, err := idempotency.Do(ctx, c.store, c.key, c.params, fn)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) || !strings.Contains(err.Error(), c.text) {
				t.Errorf("%s: got %v, want %v mentioning %q", c.name, err, c.want, c.text)
			}
		}
		if _, err := idempotency.Do[int](ctx, s, "k", nil, nil); err == nil || !strings.Contains(err.Error(), "nil fn") {
			t.Errorf("nil fn: got %v", err)
		}
		// 255 bytes of printable ASCII is fine.
		if err := idempotency.ValidateKey(strings.Repeat("~", 255)); err != nil {
			t.Error(err)
		}
		// A value that cannot be encoded: fn ran, nothing committed.
		_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx *sqlx.Tx) (chan int, error) {
			_, err := fn(ctx, tx)
			return make(chan int), err
		})
		if err == nil || !strings.Contains(err.Error(), "value cannot be encoded as JSON") {
			t.Errorf("channel value: got %v", err)
		}
		if calls.Load() != 1 || e.charges(t, "k") != 0 || e.keys(t) != 0 {
			t.Errorf("bad input: fn ran %d times, %d charges, %d keys; want 1 (the value case), 0, 0", calls.Load(), e.charges(t, "k"), e.keys(t))
		}
	})
}

func TestScopesAreIsolated(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		a, err := idempotency.Run(ctx, s.Scope("acct_a"), "k", nil, charge("k", 1, &calls))
		if err != nil {
			t.Fatal(err)
		}
		b, err := idempotency.Run(ctx, s.Scope("acct_b"), "k", nil, charge("k", 1, &calls))
		if err != nil {
			t.Fatal(err)
		}
		if a.Replayed || b.Replayed || calls.Load() != 2 {
			t.Errorf("the same key in two scopes ran %d times; want 2 fresh runs", calls.Load())
		}
	})
}

func isolationLevels(kind string) []sql.IsolationLevel {
	switch kind {
	case "postgres":
		return []sql.IsolationLevel{sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelSerializable}
	case "mysql":
		return []sql.IsolationLevel{sql.LevelReadCommitted, sql.LevelRepeatableRead}
	}
	return []sql.IsolationLevel{sql.LevelDefault}
}

// TestTwinsRunOnce: 64 goroutines on one key run fn once and all get its
// value, at every isolation level.
func TestTwinsRunOnce(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		for _, level := range isolationLevels(e.Kind) {
			t.Run(level.String(), func(t *testing.T) {
				s := e.store(t, idempotency.WithIsolation(level), idempotency.WithWait(30*time.Second))
				key := "twins-" + strings.ReplaceAll(level.String(), " ", "")
				var calls atomic.Int64
				fn := func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
					r, err := charge(key, 7, &calls)(ctx, tx)
					time.Sleep(50 * time.Millisecond) // keep the twins waiting
					return r, err
				}
				const n = 64
				results := make([]idempotency.Result[receipt], n)
				errs := make([]error, n)
				var wg sync.WaitGroup
				for i := range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						results[i], errs[i] = idempotency.Run(ctx, s, key, 7, fn)
					}()
				}
				wg.Wait()
				fresh := 0
				for i := range n {
					if errs[i] != nil {
						t.Fatalf("twin %d: %v", i, errs[i])
					}
					if results[i].Value != results[0].Value {
						t.Fatalf("twin %d got %+v, twin 0 got %+v", i, results[i].Value, results[0].Value)
					}
					if !results[i].Replayed {
						fresh++
					}
				}
				if calls.Load() != 1 || fresh != 1 || e.charges(t, key) != 1 {
					t.Errorf("fn ran %d times, %d fresh answers, %d charges; want 1, 1, 1", calls.Load(), fresh, e.charges(t, key))
				}
			})
		}
	})
}

// TestWinnerRollsBack: the first call holds the key while twins wait, then
// fails; one twin runs fn, the rest replay it, and no write leaks (on
// MariaDB the twins see deadlocks here).
func TestWinnerRollsBack(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		for _, level := range isolationLevels(e.Kind) {
			t.Run(level.String(), func(t *testing.T) {
				s := e.store(t, idempotency.WithIsolation(level), idempotency.WithWait(30*time.Second))
				key := "winner-" + strings.ReplaceAll(level.String(), " ", "")
				var calls atomic.Int64
				release := make(chan struct{})
				claimed := make(chan struct{})
				winner := make(chan error, 1)
				go func() {
					_, err := idempotency.Do(ctx, s, key, nil, func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
						_, _ = charge(key, 1, &calls)(ctx, tx)
						close(claimed)
						<-release
						return receipt{}, errDeclined
					})
					winner <- err
				}()
				<-claimed
				const n = 16
				var wg sync.WaitGroup
				results := make([]idempotency.Result[receipt], n)
				errs := make([]error, n)
				for i := range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						results[i], errs[i] = idempotency.Run(ctx, s, key, nil, charge(key, 1, &calls))
					}()
				}
				time.Sleep(300 * time.Millisecond) // let the twins queue on the key
				close(release)
				if err := <-winner; !errors.Is(err, errDeclined) {
					t.Fatalf("winner: %v", err)
				}
				wg.Wait()
				fresh := 0
				for i := range n {
					if errs[i] != nil {
						t.Fatalf("twin %d: %v", i, errs[i])
					}
					if results[i].Value != results[0].Value {
						t.Fatalf("twins disagree: %+v vs %+v", results[i].Value, results[0].Value)
					}
					if !results[i].Replayed {
						fresh++
					}
				}
				if fresh != 1 || e.charges(t, key) != 1 {
					t.Errorf("%d fresh answers, %d charges; want 1 and 1", fresh, e.charges(t, key))
				}
			})
		}
	})
}

func TestWaitBound(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t, idempotency.WithWait(100*time.Millisecond))
		var calls atomic.Int64
		release := make(chan struct{})
		claimed := make(chan struct{})
		winner := make(chan error, 1)
		go func() {
			_, err := idempotency.Do(ctx, s, "slow", nil, func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
				r, err := charge("slow", 1, &calls)(ctx, tx)
				close(claimed)
				<-release
				return r, err
			})
			winner <- err
		}()
		<-claimed
		_, err := idempotency.Do(ctx, s, "slow", nil, charge("slow", 1, &calls))
		close(release)
		if !errors.Is(err, idempotency.ErrInProgress) {
			t.Fatalf("twin past the wait bound: %v, want ErrInProgress", err)
		}
		if err := <-winner; err != nil {
			t.Fatal(err)
		}
		if calls.Load() != 1 || e.charges(t, "slow") != 1 {
			t.Errorf("fn ran %d times; want 1", calls.Load())
		}
	})
}

// TestStorm: thousands of calls over hundreds of keys from many goroutines;
// every key's fn commits once and every caller of a key gets one value.
func TestStorm(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t, idempotency.WithWait(time.Minute))
		const calls, keys, workers = 2000, 200, 32
		var ran atomic.Int64
		seen := make([]sync.Map, 1)
		var wg sync.WaitGroup
		var failures atomic.Int64
		next := atomic.Int64{}
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= calls {
						return
					}
					key := fmt.Sprintf("storm-%d", rand.IntN(keys))
					r, err := idempotency.Do(ctx, s, key, key, charge(key, 1, &ran))
					if err != nil {
						t.Errorf("%s: %v", key, err)
						failures.Add(1)
						return
					}
					if prev, loaded := seen[0].LoadOrStore(key, r); loaded && prev.(receipt) != r {
						t.Errorf("%s: two answers %+v and %+v", key, prev, r)
					}
				}
			}()
		}
		wg.Wait()
		var rows, distinct int
		if err := e.db.Get(&rows, `SELECT COUNT(*) FROM charges`); err != nil {
			t.Fatal(err)
		}
		if err := e.db.Get(&distinct, `SELECT COUNT(DISTINCT k) FROM charges`); err != nil {
			t.Fatal(err)
		}
		if rows != distinct || distinct != e.keys(t) || distinct < keys*9/10 {
			t.Errorf("%d charges over %d keys, %d key rows; want one charge per key row, nearly all %d keys", rows, distinct, e.keys(t), keys)
		}
		t.Logf("%d calls, %d keys: fn ran %d times (rolled-back attempts included)", calls, keys, ran.Load())
	})
}

func TestDoTx(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64

		// The key commits with the caller's transaction.
		tx := e.db.MustBegin()
		if _, err := idempotency.DoTx(ctx, tx, s, "joined", nil, charge("joined", 1, &calls)); err != nil {
			t.Fatal(err)
		}
		// A replay inside the same transaction sees its own key.
		if r, err := idempotency.RunTx(ctx, tx, s, "joined", nil, charge("joined", 1, &calls)); err != nil || !r.Replayed {
			t.Fatalf("replay in the same transaction: %v, replayed %v", err, r.Replayed)
		}
		// fn's error undoes fn's writes but leaves the transaction usable.
		_, err := idempotency.DoTx(ctx, tx, s, "failing", nil, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
			_, _ = charge("failing", 1, &calls)(ctx, tx)
			return 0, errDeclined
		})
		if !errors.Is(err, errDeclined) {
			t.Fatalf("got %v", err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if e.charges(t, "joined") != 1 || e.charges(t, "failing") != 0 || e.keys(t) != 1 {
			t.Errorf("after commit: %d joined, %d failing charges, %d keys; want 1, 0, 1", e.charges(t, "joined"), e.charges(t, "failing"), e.keys(t))
		}

		// When the caller rolls back, the key goes with it.
		tx = e.db.MustBegin()
		if _, err := idempotency.DoTx(ctx, tx, s, "rolled", nil, charge("rolled", 1, &calls)); err != nil {
			t.Fatal(err)
		}
		_ = tx.Rollback()
		if e.charges(t, "rolled") != 0 || e.keys(t) != 1 {
			t.Error("a rolled-back caller's key survived")
		}
		if r, err := idempotency.Run(ctx, s, "joined", nil, charge("joined", 1, &calls)); err != nil || !r.Replayed {
			t.Errorf("Do after DoTx: %v, replayed %v", err, r.Replayed)
		}
		if _, err := idempotency.DoTx[int](ctx, nil, s, "k", nil, nil); err == nil {
			t.Error("DoTx with a nil tx: no error")
		}
	})
}

func TestPrune(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		short := e.store(t, idempotency.WithTTL(100*time.Millisecond), idempotency.WithPruneBatch(7))
		long := e.store(t)
		var calls atomic.Int64
		for i := range 30 {
			key := fmt.Sprintf("old-%d", i)
			if _, err := idempotency.Do(ctx, short, key, nil, charge(key, 1, &calls)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := idempotency.Do(ctx, long, "live", nil, charge("live", 1, &calls)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		n, err := short.Prune(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n != 30 || e.keys(t) != 1 {
			t.Errorf("pruned %d, %d keys left; want 30 and 1", n, e.keys(t))
		}
		if r, err := idempotency.Run(ctx, long, "live", nil, charge("live", 1, &calls)); err != nil || !r.Replayed {
			t.Errorf("the live key after pruning: %v, replayed %v", err, r.Replayed)
		}
	})
}

// TestReadFirst: with WithReadFirst a replay is answered by one read before
// any transaction, and everything else behaves as without it.
func TestReadFirst(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t, idempotency.WithReadFirst(true), idempotency.WithWait(30*time.Second))
		var calls atomic.Int64
		first, err := idempotency.Run(ctx, s, "rf", 1, charge("rf", 1, &calls))
		if err != nil || first.Replayed {
			t.Fatalf("fresh: %v, replayed %v", err, first.Replayed)
		}
		again, err := idempotency.Run(ctx, s, "rf", 1, charge("rf", 1, &calls))
		if err != nil || !again.Replayed || again.Value != first.Value {
			t.Fatalf("replay: %v, %+v", err, again)
		}
		if _, err := idempotency.Do(ctx, s, "rf", 2, charge("rf", 2, &calls)); !errors.Is(err, idempotency.ErrParamsMismatch) {
			t.Fatalf("other params: %v", err)
		}
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := idempotency.Do(ctx, s, "rf-twins", 1, charge("rf-twins", 1, &calls)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if calls.Load() != 2 || e.charges(t, "rf") != 1 || e.charges(t, "rf-twins") != 1 {
			t.Errorf("fn ran %d times; want 2 (one per key)", calls.Load())
		}
	})
}
