package pgxstore

import (
	"context"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency"
)

// BenchmarkDo compares a fresh Do and a replay on the pgx store with the
// bare transaction the caller would commit anyway (BEGIN; INSERT a row;
// COMMIT), on one connection: the cost of one call, its allocations, and a
// profile of the client's share of it.
//
//	go test -run '^$' -bench BenchmarkDo -benchmem ./pgxstore
func BenchmarkDo(b *testing.B) {
	ctx := context.Background()
	pool := openPool(b, testDSN(b), func(c *pgxpool.Config) { c.MaxConns = 1 })
	insert := `INSERT INTO charges (k, amount) VALUES ($1, 100)`
	var seq int
	key := func() string { seq++; return "bench-" + strconv.Itoa(seq) }
	fn := func(key string) func(context.Context, pgx.Tx) (int64, error) {
		return func(ctx context.Context, tx pgx.Tx) (int64, error) {
			_, err := tx.Exec(ctx, insert, key)
			return 100, err
		}
	}
	type request struct{ Amount int64 }

	b.Run("bare tx", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, insert, key())
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, readFirst := range []bool{false, true} {
		s, err := New(pool, idempotency.WithReadFirst(readFirst))
		if err != nil {
			b.Fatal(err)
		}
		suffix := ""
		if readFirst {
			suffix = " (ReadFirst)"
		}
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
