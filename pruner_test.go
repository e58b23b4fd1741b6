package idempotency_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestRunPruner runs two pruners at once, with tiny batches, while calls
// keep writing both short-lived and live keys: every expired key goes,
// every live key stays and still replays, and both pruners return nil when
// their context is cancelled.
func TestRunPruner(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		live := e.store(t)
		short := e.store(t, idempotency.WithTTL(time.Millisecond))
		var calls atomic.Int64

		// A backlog of expired keys before the pruners start.
		const backlog = 60
		for i := range backlog {
			key := fmt.Sprintf("old-%d", i)
			if _, err := idempotency.Do(ctx, short, key, i, charge(key, i, &calls)); err != nil {
				t.Fatal(err)
			}
		}

		logs := &recorder{}
		pctx, stop := context.WithCancel(ctx)
		defer stop()
		pruner := e.store(t, idempotency.WithPruneBatch(7))
		done := make(chan error, 2)
		for i := range 2 {
			go func() {
				opts := []idempotency.PrunerOption{idempotency.PruneEvery(5 * time.Millisecond), idempotency.PruneAtStart(), idempotency.PrunePause(0)}
				if i == 0 {
					opts = append(opts, idempotency.PruneLogger(slog.New(logs)))
				}
				done <- pruner.RunPruner(pctx, opts...)
			}()
		}

		// Live traffic while the pruners run: new keys that must stay, and
		// short-lived ones that the pruners may take as soon as they expire.
		var wg sync.WaitGroup
		var liveKeys sync.Map
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 15 {
					key := fmt.Sprintf("live-%d-%d", w, i)
					if _, err := idempotency.Do(ctx, live, key, i, charge(key, i, &calls)); err != nil {
						t.Error(key, err)
						return
					}
					liveKeys.Store(key, i)
					tmp := fmt.Sprintf("tmp-%d-%d", w, i)
					if _, err := idempotency.Do(ctx, short, tmp, i, charge(tmp, i, &calls)); err != nil {
						t.Error(tmp, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		const liveCount = 3 * 15

		// Wait (bounded) until only the live keys are left.
		deadline := time.Now().Add(time.Minute)
		for e.keys(t) != liveCount {
			if time.Now().After(deadline) {
				t.Fatalf("%d keys left after a minute of pruning; want the %d live ones", e.keys(t), liveCount)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// The traffic is over: the logged pruner finishes a run within its
		// interval now (on SQLite a run may have waited on the write lock
		// for as long as the traffic lasted).
		for !logs.has("idempotency: pruned", "rows", "batches", "duration") {
			if time.Now().After(deadline) {
				break // reported below
			}
			time.Sleep(10 * time.Millisecond)
		}
		stop()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("RunPruner after cancel = %v, want nil", err)
			}
		}

		// Every live key still replays its first answer without running fn.
		before := calls.Load()
		liveKeys.Range(func(k, v any) bool {
			r, err := idempotency.Run(ctx, live, k.(string), v, charge(k.(string), v.(int), &calls))
			if err != nil || !r.Replayed {
				t.Errorf("live key %s: replayed=%v err=%v; want a replay", k, r.Replayed, err)
			}
			return true
		})
		if calls.Load() != before {
			t.Errorf("fn ran %d times for live keys after pruning; want 0", calls.Load()-before)
		}

		// The logged runs delete no more than the expired keys (the other
		// pruner may take some), and name rows, batches and duration.
		if got := logs.sum("rows"); got > backlog+liveCount {
			t.Errorf("the logged pruner reports %d rows; only %d keys expired", got, backlog+liveCount)
		}
		if !logs.has("idempotency: pruned", "rows", "batches", "duration") {
			t.Errorf("no log record with rows, batches and duration: %v", logs.messages())
		}
	})
}

// TestRunPrunerStopsWhileWaiting: a pruner between runs returns nil as soon
// as its context is cancelled, and one whose context is already done
// returns nil without pruning.
func TestRunPrunerStopsWhileWaiting(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		c, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- s.RunPruner(c, idempotency.PruneEvery(time.Hour)) }()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunPruner = %v, want nil", err)
		}

		short := e.store(t, idempotency.WithTTL(time.Millisecond))
		var calls atomic.Int64
		if _, err := idempotency.Do(ctx, short, "k", 1, charge("k", 1, &calls)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		if err := s.RunPruner(c, idempotency.PruneAtStart()); err != nil {
			t.Errorf("RunPruner on a done context = %v, want nil", err)
		}
		if n := e.keys(t); n != 1 {
			t.Errorf("%d keys after a pruner on a done context; want the 1 expired key untouched", n)
		}
	})
}

func TestRunPrunerOptions(t *testing.T) {
	t.Parallel()
	db := testStoreSQLite(t)
	for _, tc := range []struct {
		opt  idempotency.PrunerOption
		want string
	}{
		{idempotency.PruneEvery(0), "PruneEvery(0s)"},
		{idempotency.PruneEvery(-time.Second), "PruneEvery(-1s)"},
		{idempotency.PruneJitter(1), "PruneJitter(1)"},
		{idempotency.PruneJitter(-0.1), "PruneJitter(-0.1)"},
		{idempotency.PruneJitter(math.NaN()), "PruneJitter(NaN)"},
		{idempotency.PruneLogger(nil), "PruneLogger(nil)"},
		{idempotency.PrunePause(-time.Millisecond), "PrunePause(-1ms)"},
	} {
		err := db.RunPruner(ctx, tc.opt)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "idempotency: ") {
			t.Errorf("RunPruner with a bad option = %v; want an error naming %s", err, tc.want)
		}
	}
}

func testStoreSQLite(t *testing.T) *idempotency.Store {
	t.Helper()
	for _, b := range testdb.Backends() {
		if b.Name == "sqlite" {
			s, err := idempotency.New(b.Open(t))
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	t.Fatal("no sqlite backend")
	return nil
}

// recorder is a slog.Handler that keeps every record.
type recorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	return nil
}

func (r *recorder) sum(attr string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, rec := range r.records {
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == attr {
				n += a.Value.Int64()
			}
			return true
		})
	}
	return n
}

func (r *recorder) has(msg string, attrs ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.records {
		if rec.Message != msg {
			continue
		}
		seen := map[string]bool{}
		rec.Attrs(func(a slog.Attr) bool { seen[a.Key] = true; return true })
		all := true
		for _, a := range attrs {
			all = all && seen[a]
		}
		if all {
			return true
		}
	}
	return false
}

func (r *recorder) messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var m []string
	for _, rec := range r.records {
		m = append(m, rec.Message)
	}
	return m
}

// TestPrunePartitionedTable: on a key table hash-partitioned by scope, rows
// of different partitions share physical row ids (ctid); Prune must delete
// the expired rows of one tenant and never the live rows of another.
func TestPrunePartitionedTable(t *testing.T) {
	for _, b := range testdb.Backends() {
		if b.Kind != "postgres" {
			continue
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			db := b.Open(t)
			const parts = 4
			ddl := []string{`CREATE TABLE keys_by_scope (LIKE idempotency_keys INCLUDING DEFAULTS, PRIMARY KEY (scope, key)) PARTITION BY HASH (scope)`,
				`CREATE INDEX ON keys_by_scope (expires_at)`}
			for i := range parts {
				ddl = append(ddl, fmt.Sprintf(`CREATE TABLE keys_by_scope_%d PARTITION OF keys_by_scope FOR VALUES WITH (MODULUS %d, REMAINDER %d)`, i, parts, i))
			}
			for _, q := range ddl {
				if _, err := db.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			e := newEnv(t, b, db)
			short := e.store(t, idempotency.WithTable("keys_by_scope"), idempotency.WithTTL(time.Millisecond), idempotency.WithPruneBatch(3))
			long := e.store(t, idempotency.WithTable("keys_by_scope"))
			var calls atomic.Int64
			// Tenants spread over the partitions; each partition's rows start
			// at the same ctids, so expired and live rows share them.
			var liveScopes, deadScopes []string
			for i := range 16 {
				scope := fmt.Sprintf("tenant-%d", i)
				s, ttl := long, &liveScopes
				if i%2 == 0 {
					s, ttl = short, &deadScopes
				}
				*ttl = append(*ttl, scope)
				for j := range 5 {
					key := fmt.Sprintf("%s-%d", scope, j)
					if _, err := idempotency.Do(ctx, s.Scope(scope), key, nil, charge(key, 1, &calls)); err != nil {
						t.Fatal(err)
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
			n, err := short.Prune(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var live int
			if err := db.Get(&live, `SELECT count(*) FROM keys_by_scope WHERE expires_at > now()`); err != nil {
				t.Fatal(err)
			}
			if n != int64(5*len(deadScopes)) || live != 5*len(liveScopes) {
				t.Fatalf("pruned %d rows and %d live rows are left; want %d pruned and %d left", n, live, 5*len(deadScopes), 5*len(liveScopes))
			}
			for _, scope := range liveScopes {
				key := scope + "-0"
				if r, err := idempotency.Run(ctx, long.Scope(scope), key, nil, charge(key, 1, &calls)); err != nil || !r.Replayed {
					t.Fatalf("%s after Prune: %v, replayed %v; want a replay", scope, err, r.Replayed)
				}
			}
		})
	}
}
