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
func TestExample(t *testing.T) { exampletest.Each(t, "grpc", check) }

func check(t *testing.T, _ testdb.Backend, db *sqlx.DB) {
	t.Helper()
	text := exampletest.Output(t, db, run)
	exampletest.Contains(t, text,
		"handler ran 1 time (replayed=false)",
		"2. retry order-1: pay_",
		"handler ran 0 times (replayed=true)",
		"3. order-1 with another amount: FailedPrecondition [IDEMPOTENCY_KEY_REUSED]; handler ran 0 times",
		`its retry: FailedPrecondition "card declined" [CARD_DECLINED] (replayed=true); handler ran 1 time`,
		"grpc-go retried with the same key, got pay_",
		"(replayed=true); handler ran 1 time\n6.",
		"7. GetPayment pay_",
		"Payments in the database: 3 ",
	)
	var rows int
	if err := db.GetContext(context.Background(), &rows, `SELECT COUNT(*) FROM payments`); err != nil {
		t.Fatal(err)
	}
	if rows != 3 {
		t.Errorf("%d payments in the database; want 3", rows)
	}
}
