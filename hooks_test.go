package idempotency_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

type ctxKey struct{}

func TestHooks(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		var (
			mu      sync.Mutex
			events  []idempotency.CallEvent
			pruned  []idempotency.PruneEvent
			started atomic.Int64
		)
		s := e.store(t, idempotency.WithTTL(100*time.Millisecond), idempotency.WithHooks(idempotency.Hooks{
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
		fn := charge("h", 1, &calls)
		sawKey := func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
			if ctx.Value(ctxKey{}) != "h" {
				t.Error("fn did not get CallStart's context")
			}
			return fn(ctx, tx)
		}
		_, _ = idempotency.Do(ctx, s, "h", 1, sawKey)
		_, _ = idempotency.Do(ctx, s, "h", 1, sawKey)
		_, _ = idempotency.Do(ctx, s, "h", 2, sawKey)
		_, _ = idempotency.Do(ctx, s, "f", 1, func(context.Context, *sqlx.Tx) (int, error) {
			return 0, idempotency.Final(errDeclined)
		})
		_, _ = idempotency.Do(ctx, s, "e", 1, func(context.Context, *sqlx.Tx) (int, error) { return 0, errDeclined })
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
		time.Sleep(200 * time.Millisecond)
		n, err := s.Prune(ctx)
		if err != nil || len(pruned) != 1 || pruned[0].Rows != n || n != 2 || pruned[0].Batches != 1 {
			t.Errorf("prune: %d, %v; events %+v; want 2 rows in one batch", n, err, pruned)
		}
	})
}
