package main

import (
	"testing"

	"github.com/exactlyonce/idempotency/dialects"
)

// TestDriversHaveSchemas: every driver the command links has a dialect
// with a schema (migrations, missing-table errors, stats SQL).
func TestDriversHaveSchemas(t *testing.T) {
	t.Parallel()
	for name := range drivers {
		d, err := dialects.Open(name, dialects.DefaultTable)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if _, ok := d.(dialects.Schema); !ok {
			t.Errorf("%s: the %s dialect has no Schema", name, d.Name())
		}
	}
	// A dialect without a driver linked here is a usage error, not a
	// failure to connect.
	a := []string{"stats", "--driver", "sqlite3", "--dsn", "x.db"}
	cli(a...).must(t, 2, a, `--driver "sqlite3"`, "mysql, pgx, pgx/v5, postgres, sqlite")
}
