package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency/examples/internal/exampletest"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestExample runs the example on Postgres, in a schema of its own, and
// checks what it printed and what it left in the database. Without
// IDEMPOTENCY_POSTGRES_DSN (or Docker) it skips, except under CI=true.
func TestExample(t *testing.T) {
	t.Parallel()
	dsn := testdb.Backend{Name: "pgx", Driver: "pgx", Kind: "postgres"}.DSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	// Registered after DSN's cleanup, so it runs first: the pool's
	// connections are gone before the schema is dropped.
	t.Cleanup(pool.Close)

	var out bytes.Buffer
	if err := run(ctx, &out, pool); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	t.Logf("output:\n%s", out.String())
	exampletest.Contains(t, out.String(),
		"with sqlc's CreateCharge inside idempotency.Run, on pgxstore.",
		"1. key order-1, 10.00 EUR: fn ran 1 time, inserted charge ",
		"(replayed=false)",
		"2. retry order-1: fn ran 0 times, same charge ",
		"(replayed=true)",
		"3. key order-1, 20.00 EUR: refused (ErrParamsMismatch), fn ran 0 times",
		"Charges with key order-1: 1 (charge ",
		", 10.00 EUR)",
	)

	// The database agrees, counted over every row, not just the run's.
	var charges, keys int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM charges`).Scan(&charges); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM idempotency_keys`).Scan(&keys); err != nil {
		t.Fatal(err)
	}
	if charges != 1 || keys != 1 {
		t.Errorf("charges = %d, keys = %d; want 1 and 1", charges, keys)
	}
}
