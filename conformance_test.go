package idempotency_test

import (
	"testing"

	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestConformance runs the behaviour suite every driver passes
// (internal/conformance) on the sqlx store, once per database/sql backend:
// SQLite, Postgres through lib/pq and through pgx's stdlib, MySQL or
// MariaDB. The backends run in parallel.
func TestConformance(t *testing.T) {
	for _, b := range testdb.Backends() {
		conformance.Run(t, conformance.SQL(b))
	}
}
