package main

import (
	"regexp"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/examples/internal/exampletest"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestExample runs the example on its default SQLite file and on every
// backend, and checks what it printed: one transfer per key, whatever the
// retries and twins, and balances that say so.
func TestExample(t *testing.T) { exampletest.Each(t, "echo-bun", check) }

func check(t *testing.T, _ testdb.Backend, db *sqlx.DB) {
	t.Helper()
	text := exampletest.Output(t, db, run)
	exampletest.Contains(t, text,
		"1. key t-1, $30: 201 (replayed=false)",
		"2. retry key t-1, $30: 201 (replayed=true)",
		"same transfer both times: true",
		"3. twins, key t-2, $20: 201 and 201",
		"4. reused key t-1, $99: 422 (replayed=false) problem key-reused",
		"5. overdraw key t-3, $500: 409 (replayed=false) insufficient funds",
		"transfers made: 2 (money moved once per key)",
	)
	if !regexp.MustCompile(`Balances: acc_\w+ \$50, acc_\w+ \$50;`).MatchString(text) {
		t.Errorf("balances: want $50 and $50 in\n%s", text)
	}
}
