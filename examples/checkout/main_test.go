package main

import (
	"context"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/examples/internal/exampletest"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestExample runs the example on its default SQLite file and on every
// backend, and checks what it printed and what it left in the database.
func TestExample(t *testing.T) { exampletest.Each(t, "checkout", check) }

func check(t *testing.T, _ testdb.Backend, db *sqlx.DB) {
	t.Helper()
	text := exampletest.Output(t, db, run)
	exampletest.Contains(t, text,
		"1. pay-1, $25: 201 {",
		"2. retry pay-1: 201 {",
		"(replayed=true)",
		"3. pay-2, $40, provider down: 503 problem flow-stopped",
		"retry pay-2: 201 {",
		"4. pay-3, $900: 402 card declined (replayed=false)",
		"retry pay-3: 402 card declined (replayed=true)",
		"5. pay-1, $30: 422 problem key-reused",
		"6. pay-4, $15, provider down, the client gives up: 503",
		"a late retry of pay-4: 201 {",
		"Provider charges per key: 3 keys charged, each key charged once",
		"Orders: authorized, authorized, authorized, declined",
	)
	// Finished flows leave nothing in the flow tables: their answers are
	// records of the key table.
	ctx := context.Background()
	var flows, steps, keys int
	for q, n := range map[string]*int{
		`SELECT COUNT(*) FROM idempotency_flows`: &flows,
		`SELECT COUNT(*) FROM idempotency_steps`: &steps,
		`SELECT COUNT(*) FROM idempotency_keys`:  &keys,
	} {
		if err := db.GetContext(ctx, n, q); err != nil {
			t.Fatal(err)
		}
	}
	if flows != 0 || steps != 0 || keys != 4 {
		t.Errorf("%d flows, %d steps, %d keys; want 0, 0, 4", flows, steps, keys)
	}
}
