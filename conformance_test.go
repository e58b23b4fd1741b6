package idempotency_test

import (
	"testing"

	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestConformance runs the behaviour suite every driver passes
// (internal/conformance) on the sqlx store, once per database/sql backend:
// SQLite, Postgres through lib/pq and through pgx's stdlib, MySQL or
// MariaDB, TiDB in both modes, and Postgres through PgBouncer in
// transaction pooling (lib/pq, pgx stdlib). The backends run in parallel.
func TestConformance(t *testing.T) {
	for _, b := range append(testdb.Backends(), testdb.PgBouncer()...) {
		conformance.Run(t, conformance.SQL(b))
	}
}
