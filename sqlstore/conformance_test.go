package sqlstore_test

import (
	"testing"

	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestConformance runs the behaviour suite every driver passes on the
// database/sql store: SQLite, Postgres through lib/pq and through pgx's
// stdlib, MySQL or MariaDB, and TiDB in both of its transaction modes, as the
// root package runs it on the sqlx store.
func TestConformance(t *testing.T) {
	for _, b := range testdb.Backends() {
		conformance.Run(t, conformance.StdSQL(b))
	}
}
