package pgxstore

import (
	"testing"

	"github.com/exactlyonce/idempotency/internal/conformance"
)

// BenchmarkFlow is conformance.BenchmarkFlow on the pgx store: a flow of
// two steps and a call against the same work by hand, and a flow's replay
// against Do's.
//
//	go test -run '^$' -bench BenchmarkFlow -benchmem ./pgxstore
func BenchmarkFlow(b *testing.B) {
	conformance.BenchmarkFlow(b, harness)
}
