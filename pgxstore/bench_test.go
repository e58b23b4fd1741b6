package pgxstore

import (
	"testing"

	"github.com/exactlyonce/idempotency/internal/conformance"
)

// BenchmarkDo is the drivers' benchmark (conformance.Benchmark) on the pgx
// store, against pgx's own bare transaction.
//
//	go test -run '^$' -bench BenchmarkDo -benchmem ./pgxstore
func BenchmarkDo(b *testing.B) {
	conformance.Benchmark(b, harness)
}
