package main

import (
	"context"
	"strings"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/examples/internal/exampletest"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestExample runs the example on its default SQLite file and on every
// backend, and checks what it printed and what it left in the database.
func TestExample(t *testing.T) { exampletest.Each(t, "quickstart", check) }

func check(t *testing.T, b testdb.Backend, db *sqlx.DB) {
	t.Helper()
	text := exampletest.Output(t, db, run)
	ctx := context.Background()
	if n := strings.Count(text, "\n"); n > 25 {
		t.Errorf("output has %d lines, want at most 25", n)
	}
	exampletest.Contains(t, text,
		"1. key order-1, $10: fn ran 1 time, charged ch_",
		"(replayed=false)",
		"2. retry order-1, $10: fn ran 0 times, same charge ch_",
		"(replayed=true)",
		"params mismatch (ErrParamsMismatch), fn ran 0 times",
		`retry order-3: "card declined" again (code card_declined), fn ran 0 times (replayed=true)`,
		"Charges per key: order-1=1 order-2=1 order-3=0 (fn ran ",
	)
	// The twins of step 4: one runs fn while the other waits, or, with
	// optimistic transactions (no lock before COMMIT), both run it and the
	// first to commit wins.
	twins := "4. two concurrent calls, key order-2: fn ran 1 time; one replayed"
	total := "(fn ran 3 times for 7 calls)"
	if b.Optimistic() && strings.Contains(text, "fn ran 2 times; one replayed") {
		twins = "4. two concurrent calls, key order-2: fn ran 2 times; one replayed"
		total = "(fn ran 4 times for 7 calls)"
	}
	exampletest.Contains(t, text, twins, total)
	// The database agrees: two charges, three keys (the declined card's
	// failure is stored under its key, with no charge).
	var charges, keys int
	if err := db.GetContext(ctx, &charges, `SELECT COUNT(*) FROM charges`); err != nil {
		t.Fatal(err)
	}
	if err := db.GetContext(ctx, &keys, `SELECT COUNT(*) FROM idempotency_keys`); err != nil {
		t.Fatal(err)
	}
	if charges != 2 || keys != 3 {
		t.Errorf("charges = %d, keys = %d; want 2 and 3", charges, keys)
	}
}
