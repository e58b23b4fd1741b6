package conformance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
)

func testPrune[TTx any](t *testing.T, e *suite[TTx]) {
	var batches []idempotency.PruneBatchEvent
	short := e.store(t, idempotency.WithTTL(100*time.Millisecond), idempotency.WithPruneBatch(7),
		idempotency.WithPrunePause(100*time.Millisecond),
		idempotency.WithHooks(idempotency.Hooks{PruneBatch: func(_ context.Context, b idempotency.PruneBatchEvent) {
			batches = append(batches, b)
		}}))
	long := e.store(t)
	var calls atomic.Int64
	for i := range 30 {
		key := fmt.Sprintf("old-%d", i)
		if _, err := idempotency.Do(ctx, short, key, nil, e.charge(key, 1, &calls)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := idempotency.Do(ctx, long, "live", nil, e.charge("live", 1, &calls)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	began := time.Now()
	n, err := short.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 30 || e.keys(t) != 1 {
		t.Errorf("pruned %d, %d keys left; want 30 and 1", n, e.keys(t))
	}
	// 30 rows in batches of 7: five batches (the last finds 2), each
	// reported, with four pauses between them.
	if len(batches) != 5 || batches[4].Batch != 5 || batches[4].Rows != 2 || batches[4].Total != 30 {
		t.Errorf("batch events %+v; want 5, the last with 2 rows and a total of 30", batches)
	}
	if took := time.Since(began); took < 4*100*time.Millisecond {
		t.Errorf("Prune of 5 batches with WithPrunePause(100ms) took %v; the pauses were skipped", took)
	}
	if r, err := idempotency.Run(ctx, long, "live", nil, e.charge("live", 1, &calls)); err != nil || !r.Replayed {
		t.Errorf("the live key after pruning: %v, replayed %v", err, r.Replayed)
	}
}

// testPrunePartitionedTable: on a key table hash-partitioned by scope, rows
// of different partitions share physical row ids (ctid); Prune must delete
// the expired rows of one tenant and never the live rows of another.
func testPrunePartitionedTable[TTx any](t *testing.T, e *suite[TTx]) {
	const parts = 4
	ddl := []string{`CREATE TABLE keys_by_scope (LIKE idempotency_keys INCLUDING DEFAULTS, PRIMARY KEY (scope, key)) PARTITION BY HASH (scope)`,
		`CREATE INDEX ON keys_by_scope (expires_at)`}
	for i := range parts {
		ddl = append(ddl, fmt.Sprintf(`CREATE TABLE keys_by_scope_%d PARTITION OF keys_by_scope FOR VALUES WITH (MODULUS %d, REMAINDER %d)`, i, parts, i))
	}
	for _, q := range ddl {
		e.env.Exec(t, q)
	}
	short := e.store(t, idempotency.WithTable("keys_by_scope"), idempotency.WithTTL(time.Millisecond), idempotency.WithPruneBatch(3))
	long := e.store(t, idempotency.WithTable("keys_by_scope"))
	var calls atomic.Int64
	// Tenants spread over the partitions; each partition's rows start at
	// the same ctids, so expired and live rows share them.
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
			if _, err := idempotency.Do(ctx, s.Scope(scope), key, nil, e.charge(key, 1, &calls)); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(20 * time.Millisecond)
	n, err := short.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	live := e.env.Count(t, `SELECT count(*) FROM keys_by_scope WHERE expires_at > now()`)
	if n != int64(5*len(deadScopes)) || live != 5*len(liveScopes) {
		t.Fatalf("pruned %d rows and %d live rows are left; want %d pruned and %d left", n, live, 5*len(deadScopes), 5*len(liveScopes))
	}
	for _, scope := range liveScopes {
		key := scope + "-0"
		if r, err := idempotency.Run(ctx, long.Scope(scope), key, nil, e.charge(key, 1, &calls)); err != nil || !r.Replayed {
			t.Fatalf("%s after Prune: %v, replayed %v; want a replay", scope, err, r.Replayed)
		}
	}
}

// testRunPruner runs two pruners at once, with tiny batches, while calls
// keep writing both short-lived and live keys: every expired key goes,
// every live key stays and still replays, and both pruners return nil when
// their context is cancelled.
func testRunPruner[TTx any](t *testing.T, e *suite[TTx]) {
	live := e.store(t)
	short := e.store(t, idempotency.WithTTL(time.Millisecond))
	var calls atomic.Int64

	// A backlog of expired keys before the pruners start.
	const backlog = 60
	for i := range backlog {
		key := fmt.Sprintf("old-%d", i)
		if _, err := idempotency.Do(ctx, short, key, i, e.charge(key, i, &calls)); err != nil {
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
			opts := []idempotency.Option{idempotency.WithPruneInterval(5 * time.Millisecond), idempotency.WithPruneAtStart(), idempotency.WithPrunePause(0)}
			if i == 0 {
				opts = append(opts, idempotency.WithLogger(slog.New(logs)))
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
				if _, err := idempotency.Do(ctx, live, key, i, e.charge(key, i, &calls)); err != nil {
					t.Error(key, err)
					return
				}
				liveKeys.Store(key, i)
				tmp := fmt.Sprintf("tmp-%d-%d", w, i)
				if _, err := idempotency.Do(ctx, short, tmp, i, e.charge(tmp, i, &calls)); err != nil {
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
	// interval now (on SQLite a run may have waited on the write lock for
	// as long as the traffic lasted).
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
		r, err := idempotency.Run(ctx, live, k.(string), v, e.charge(k.(string), v.(int), &calls))
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
	if got := logs.sum("idempotency: pruned", "rows"); got > backlog+liveCount {
		t.Errorf("the logged pruner reports %d rows; only %d keys expired", got, backlog+liveCount)
	}
	if !logs.has("idempotency: pruned", "rows", "batches", "duration") {
		t.Errorf("no log record with rows, batches and duration: %v", logs.messages())
	}
}

// testRunPrunerStopsWhileWaiting: a pruner between runs returns nil as
// soon as its context is cancelled, and one whose context is already done
// returns nil without pruning.
func testRunPrunerStopsWhileWaiting[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	c, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.RunPruner(c, idempotency.WithPruneInterval(time.Hour)) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("RunPruner = %v, want nil", err)
	}

	short := e.store(t, idempotency.WithTTL(time.Millisecond))
	var calls atomic.Int64
	if _, err := idempotency.Do(ctx, short, "k", 1, e.charge("k", 1, &calls)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if err := s.RunPruner(c, idempotency.WithPruneAtStart()); err != nil {
		t.Errorf("RunPruner on a done context = %v, want nil", err)
	}
	if n := e.keys(t); n != 1 {
		t.Errorf("%d keys after a pruner on a done context; want the 1 expired key untouched", n)
	}
}

type ctxKey struct{}

func testHooks[TTx any](t *testing.T, e *suite[TTx]) {
	var (
		mu      sync.Mutex
		events  []idempotency.CallEvent
		pruned  []idempotency.PruneEvent
		started atomic.Int64
	)
	// The TTL outlasts the calls (a loaded machine makes each take a while),
	// then the prune below waits it out.
	const ttl = 3 * time.Second
	s := e.store(t, idempotency.WithTTL(ttl), idempotency.WithHooks(idempotency.Hooks{
		CallStart: func(ctx context.Context, scope, key string) context.Context {
			started.Add(1)
			return context.WithValue(ctx, ctxKey{}, key)
		},
		CallEnd: func(ctx context.Context, ev idempotency.CallEvent) {
			if ctx.Value(ctxKey{}) != ev.Key {
				t.Errorf("CallEnd got a context without CallStart's value")
			}
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		},
		Pruned: func(_ context.Context, ev idempotency.PruneEvent) { pruned = append(pruned, ev) },
	}))
	var calls atomic.Int64
	fn := e.charge("h", 1, &calls)
	sawKey := func(ctx context.Context, tx TTx) (receipt, error) {
		if ctx.Value(ctxKey{}) != "h" {
			t.Error("fn did not get CallStart's context")
		}
		return fn(ctx, tx)
	}
	_, _ = idempotency.Do(ctx, s, "h", 1, sawKey)
	_, _ = idempotency.Do(ctx, s, "h", 1, sawKey)
	_, _ = idempotency.Do(ctx, s, "h", 2, sawKey)
	_, _ = idempotency.Do(ctx, s, "f", 1, func(context.Context, TTx) (int, error) {
		return 0, idempotency.Final(errDeclined)
	})
	_, _ = idempotency.Do(ctx, s, "e", 1, func(context.Context, TTx) (int, error) { return 0, errDeclined })
	_, _ = idempotency.Do(ctx, s, "", 1, fn)

	want := []idempotency.Outcome{idempotency.Executed, idempotency.Replayed, idempotency.Mismatched,
		idempotency.FinalFailure, idempotency.Failed, idempotency.Invalid}
	if len(events) != len(want) || started.Load() != int64(len(want)) {
		t.Fatalf("%d events after %d starts, want %d", len(events), started.Load(), len(want))
	}
	for i, ev := range events {
		if ev.Outcome != want[i] || ev.Duration <= 0 {
			t.Errorf("event %d: %+v, want outcome %s and a duration", i, ev, want[i])
		}
	}
	if !errors.Is(events[4].Err, errDeclined) {
		t.Errorf("the failed call's event carries %v", events[4].Err)
	}
	// MySQL's claim gives a row up to ttl/8 more, so that the save
	// changes it in place.
	time.Sleep(ttl + ttl/8 + 200*time.Millisecond)
	n, err := s.Prune(ctx)
	if err != nil || len(pruned) != 1 || pruned[0].Rows != n || n != 2 || pruned[0].Batches != 1 {
		t.Errorf("prune: %d, %v; events %+v; want 2 rows in one batch", n, err, pruned)
	}
}

// testCallEndSeesPanic: a call whose fn panics ends as Panicked, not as
// Executed, and the panic goes on to the caller.
func testCallEndSeesPanic[TTx any](t *testing.T, e *suite[TTx]) {
	var events []idempotency.CallEvent
	s := e.store(t, idempotency.WithHooks(idempotency.Hooks{
		CallEnd: func(_ context.Context, ev idempotency.CallEvent) { events = append(events, ev) },
	}))
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the panic to go on", r)
			}
		}()
		_, _ = idempotency.Do(ctx, s, "k", nil, func(context.Context, TTx) (int, error) { panic("boom") })
	}()
	if len(events) != 1 || events[0].Outcome != idempotency.Panicked || events[0].Err == nil {
		t.Fatalf("events %+v; want one, Panicked, with an error", events)
	}
}
