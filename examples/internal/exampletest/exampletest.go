// Package exampletest runs an example's check on the example's own default
// database (a new SQLite file) and on every backend the project tests.
package exampletest

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// Each runs check, in parallel, on the database the example opens without
// flags and on each of testdb.Backends(); check learns which backend it
// has.
func Each(t *testing.T, name string, check func(t *testing.T, b testdb.Backend, db *sqlx.DB)) {
	t.Run("default", func(t *testing.T) {
		t.Parallel()
		db, closeDB, err := exampledb.Open("sqlite", "", name)
		if err != nil {
			t.Fatal(err)
		}
		defer closeDB()
		check(t, testdb.Backend{Name: "sqlite", Driver: "sqlite", Kind: "sqlite"}, db)
	})
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			check(t, b, b.Open(t))
		})
	}
}

// Output runs an example's run function on db, fails the test if it fails,
// and returns what it printed.
func Output(t *testing.T, db *sqlx.DB, run func(ctx context.Context, w io.Writer, db *sqlx.DB) error) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // the River demo waits for its worker
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, db); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	t.Logf("output:\n%s", out.String())
	return out.String()
}

// Contains reports each of want that text lacks.
func Contains(t *testing.T, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("output lacks %q", w)
		}
	}
}
