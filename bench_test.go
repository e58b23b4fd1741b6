package idempotency_test

import (
	"os"
	"testing"

	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// BenchmarkDo compares a fresh Do and a replay with the bare transaction
// the caller would commit anyway (BEGIN; INSERT a row; COMMIT), on every
// backend: SQLite always, the servers when IDEMPOTENCY_POSTGRES_DSN,
// IDEMPOTENCY_MYSQL_DSN and IDEMPOTENCY_TIDB_DSN are set (see
// conformance.Benchmark). Compare the ns/op and allocs/op of the
// sub-benchmarks.
//
//	go test -run '^$' -bench BenchmarkDo -benchmem
func BenchmarkDo(b *testing.B) {
	for _, be := range testdb.Backends() {
		b.Run(be.Name, func(b *testing.B) {
			if env := be.Env(); env != "" && os.Getenv(env) == "" {
				b.Skipf("set %s to benchmark %s", env, be.Name)
			}
			conformance.Benchmark(b, conformance.SQL(be))
		})
	}
}
