package idempotency_test

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// BenchmarkDo compares a fresh Do and a replay with the bare transaction
// the caller would commit anyway (BEGIN; INSERT a row; COMMIT), on every
// backend: SQLite always, the servers when IDEMPOTENCY_POSTGRES_DSN,
// IDEMPOTENCY_MYSQL_DSN and IDEMPOTENCY_TIDB_DSN are set. Compare the ns/op and allocs/op of the
// sub-benchmarks; cmd/idempotency-bench measures concurrency, round trips
// and duplicate storms.
//
//	go test -run '^$' -bench BenchmarkDo -benchmem
func BenchmarkDo(b *testing.B) {
	for _, be := range testdb.Backends() {
		b.Run(be.Name, func(b *testing.B) {
			if env := be.Env(); env != "" && os.Getenv(env) == "" {
				b.Skipf("set %s to benchmark %s", env, be.Name)
			}
			ctx := context.Background()
			db := be.Open(b)
			db.SetMaxOpenConns(1) // one caller: the cost of one call
			insert := `INSERT INTO bench_rows (ref, amount) VALUES (?, ?)`
			table := `CREATE TABLE bench_rows (ref VARCHAR(255) NOT NULL, amount BIGINT NOT NULL)`
			if be.Kind == "postgres" {
				insert = `INSERT INTO bench_rows (ref, amount) VALUES ($1, $2)`
			}
			if _, err := db.ExecContext(ctx, table); err != nil {
				b.Fatal(err)
			}
			s, err := idempotency.New(db)
			if err != nil {
				b.Fatal(err)
			}
			type request struct{ Amount int64 }
			fn := func(key string) func(context.Context, *sqlx.Tx) (int64, error) {
				return func(ctx context.Context, tx *sqlx.Tx) (int64, error) {
					_, err := tx.ExecContext(ctx, insert, key, 100)
					return 100, err
				}
			}
			var seq int
			key := func() string { seq++; return "bench-" + strconv.Itoa(seq) }

			b.Run("bare tx", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					tx, err := db.BeginTxx(ctx, nil)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := tx.ExecContext(ctx, insert, key(), 100); err != nil {
						b.Fatal(err)
					}
					if err := tx.Commit(); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("fresh", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					k := key()
					if _, err := idempotency.Do(ctx, s, k, request{100}, fn(k)); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("replay", func(b *testing.B) {
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
		})
	}
}
