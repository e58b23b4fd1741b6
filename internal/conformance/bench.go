package conformance

import (
	"context"
	"strconv"
	"testing"

	"github.com/exactlyonce/idempotency"
)

// Benchmark compares a fresh Do and a replay, with the store's default
// options and with WithReadFirst, against the bare transaction the caller
// would commit anyway (BEGIN; INSERT a charge; COMMIT), on one connection
// of h's database: the cost of one call through the driver, its
// allocations, and a profile of the client's share of it. cmd/idempotency-bench
// measures concurrency, round trips and duplicate storms.
func Benchmark[TTx any](b *testing.B, h Harness[TTx]) {
	e := h.Open(b).Reopen(b, Pool{MaxConns: 1})
	var seq int
	key := func() string { seq++; return "bench-" + strconv.Itoa(seq) }
	type request struct{ Amount int }
	fn := func(ref string) func(ctx context.Context, tx TTx) (int, error) {
		return func(ctx context.Context, tx TTx) (int, error) { return 100, e.Charge(ctx, tx, ref, 100) }
	}

	b.Run("bare tx", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tx, err := e.Begin(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := e.Charge(ctx, tx, key(), 100); err != nil {
				_ = e.Rollback(ctx, tx)
				b.Fatal(err)
			}
			if err := e.Commit(ctx, tx); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, readFirst := range []bool{false, true} {
		var opts []idempotency.Option // the defaults: reading first is the driver's call
		suffix := ""
		if readFirst {
			opts, suffix = append(opts, idempotency.WithReadFirst(true)), " (ReadFirst)"
		}
		s := e.NewStore(b, opts...)
		b.Run("fresh"+suffix, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				k := key()
				if _, err := idempotency.Do(ctx, s, k, request{100}, fn(k)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("replay"+suffix, func(b *testing.B) {
			k := key()
			if _, err := idempotency.Do(ctx, s, k, request{100}, fn(k)); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				r, err := idempotency.Run(ctx, s, k, request{100}, fn(k))
				if err != nil || !r.Replayed {
					b.Fatalf("replay: %v, replayed %v", err, r.Replayed)
				}
			}
		})
	}
}
