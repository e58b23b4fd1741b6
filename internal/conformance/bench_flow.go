package conformance

import (
	"context"
	"strconv"
	"testing"

	"github.com/exactlyonce/idempotency"
)

// BenchmarkFlow compares a flow of two steps and one call with the same
// work done by hand (two bare transactions that each insert a charge, and
// the call between them), on one connection of h's database; and a replay
// of a finished flow with a replay of Do. The call does nothing: what is
// measured is what the flow adds.
func BenchmarkFlow[TTx any](b *testing.B, h Harness[TTx]) {
	e := h.Open(b).Reopen(b, Pool{MaxConns: 1})
	var seq int
	key := func() string { seq++; return "flow-" + strconv.Itoa(seq) }
	call := func(context.Context, string) (int, error) { return 1, nil }
	bare := func(ref string) {
		tx, err := e.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := e.Charge(ctx, tx, ref, 1); err != nil {
			_ = e.Rollback(ctx, tx)
			b.Fatal(err)
		}
		if err := e.Commit(ctx, tx); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("by hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			k := key()
			bare(k + "/a")
			if _, err := call(ctx, k); err != nil {
				b.Fatal(err)
			}
			bare(k + "/b")
		}
	})
	s := e.NewStore(b)
	f := idempotency.NewFlow("bench", func(ctx context.Context, st *idempotency.Steps[TTx], k string) (int, error) {
		if _, err := idempotency.Step(st, "a", func(ctx context.Context, tx TTx) (int, error) { return 1, e.Charge(ctx, tx, k+"/a", 1) }); err != nil {
			return 0, err
		}
		if _, err := idempotency.Call(st, "call", call); err != nil {
			return 0, err
		}
		return idempotency.Step(st, "b", func(ctx context.Context, tx TTx) (int, error) { return 1, e.Charge(ctx, tx, k+"/b", 1) })
	})
	b.Run("flow", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			k := key()
			if _, err := f.Do(ctx, s, k, k); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("flow replay", func(b *testing.B) {
		k := key()
		if _, err := f.Do(ctx, s, k, k); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if r, err := f.Run(ctx, s, k, k); err != nil || !r.Replayed {
				b.Fatalf("replay: %v, replayed %v", err, r.Replayed)
			}
		}
	})
	b.Run("Do replay", func(b *testing.B) {
		k := key()
		fn := func(ctx context.Context, tx TTx) (int, error) { return 1, e.Charge(ctx, tx, k, 1) }
		if _, err := idempotency.Do(ctx, s, k, k, fn); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if r, err := idempotency.Run(ctx, s, k, k, fn); err != nil || !r.Replayed {
				b.Fatalf("replay: %v, replayed %v", err, r.Replayed)
			}
		}
	})
}
