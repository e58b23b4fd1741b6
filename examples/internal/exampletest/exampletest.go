// Package exampletest runs an example's check on the example's own default
// database (a new SQLite file) and on every backend the project tests.
package exampletest

import (
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// Each runs check, in parallel, on the database the example opens without
// flags and on each of testdb.Backends().
func Each(t *testing.T, name string, check func(t *testing.T, db *sqlx.DB)) {
	t.Run("default", func(t *testing.T) {
		t.Parallel()
		db, closeDB, err := exampledb.Open("sqlite", "", name)
		if err != nil {
			t.Fatal(err)
		}
		defer closeDB()
		check(t, db)
	})
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			check(t, b.Open(t))
		})
	}
}
