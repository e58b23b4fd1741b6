package gormadapter_test

import (
	"testing"

	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestConformance runs the behaviour suite every driver passes through
// GORM (see gormEnv): on SQLite, Postgres (lib/pq and pgx stdlib) and
// MySQL or MariaDB.
func TestConformance(t *testing.T) {
	for _, b := range testdb.OwnServers() {
		conformance.Run(t, harness(b))
	}
}
