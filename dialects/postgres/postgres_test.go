package postgres_test

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/dialects/postgres"
)

// TestClassify sorts server errors of both drivers by SQLSTATE. 40003
// (statement_completion_unknown) is CockroachDB's answer to a COMMIT whose
// outcome it cannot tell ("result is ambiguous"): whether the transaction
// committed is unknown, as when the connection breaks during COMMIT.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		state string
		want  dialects.Class
	}{
		{"40001", dialects.Retry},       // serialization failure
		{"40P01", dialects.Retry},       // deadlock
		{"55P03", dialects.LockTimeout}, // lock not available
		{"40003", dialects.Unknown},     // statement completion unknown
		{"08006", dialects.Lost},        // connection failure
		{"57P01", dialects.Lost},        // admin shutdown
		{"57014", dialects.Definite},    // query cancelled
		{"23505", dialects.Definite},    // unique violation
	} {
		if got := postgres.Classify(&pgconn.PgError{Code: c.state}); got != c.want {
			t.Errorf("pgx %s: %v, want %v", c.state, got, c.want)
		}
		if got := postgres.Classify(&pq.Error{Code: pqerror.Code(c.state)}); got != c.want {
			t.Errorf("lib/pq %s: %v, want %v", c.state, got, c.want)
		}
	}
}
