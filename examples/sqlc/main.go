// Command sqlc writes a charge through sqlc-generated queries inside
// idempotency.Run, on the native pgx store: the charge row and its key commit
// in one transaction, a retry replays the stored row without inserting
// another, and the same key with another request is refused.
//
// It needs Postgres (the pgx store speaks only to Postgres):
//
//	go run ./examples/sqlc -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
//
// or set IDEMPOTENCY_POSTGRES_DSN. The queries are in query.sql, the table in
// schema.sql; package db is what sqlc generated from them.
package main

//go:generate go run github.com/sqlc-dev/sqlc/cmd/sqlc@v1.30.0 generate

import (
	"context"
	"crypto/rand"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/sqlc/db"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// schema is the file sqlc typed the queries from, so the table the example
// creates is the one the generated code expects.
//
//go:embed schema.sql
var schema string

func main() {
	dsn := flag.String("dsn", os.Getenv("IDEMPOTENCY_POSTGRES_DSN"), "Postgres URL (default $IDEMPOTENCY_POSTGRES_DSN)")
	flag.Parse()
	if *dsn == "" {
		fmt.Fprintln(os.Stderr, "This example needs Postgres. Run it with\n"+
			"\tgo run ./examples/sqlc -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'\n"+
			"or set IDEMPOTENCY_POSTGRES_DSN")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, *dsn)
	if err != nil {
		log.Fatal(err)
	}
	err = run(ctx, os.Stdout, pool)
	pool.Close()
	if err != nil {
		log.Fatal(err)
	}
}

// ChargeRequest is what the client sends. The store keeps a fingerprint of
// it with the key, so a retry must send the same request.
type ChargeRequest struct {
	Amount   int64  `json:"amount"` // in cents
	Currency string `json:"currency"`
}

func run(ctx context.Context, w io.Writer, pool *pgxpool.Pool) error {
	// The key table and the charges table live in one database, so the key
	// and the charge commit in one transaction.
	if err := pgxstore.Up(ctx, pool); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, schema); err != nil {
		return fmt.Errorf("create charges: %w", err)
	}
	store, err := pgxstore.New(pool)
	if err != nil {
		return err
	}
	queries := db.New(pool)

	// Keys belong to a customer: another customer's "order-1" is another
	// call. A new customer per run also keeps reruns on one database apart.
	customer := "cus_" + rand.Text()[:16]
	s := store.Scope(customer)

	calls := 0 // how many times fn ran
	charge := func(key string, req ChargeRequest) (idempotency.Result[db.Charge], error) {
		return idempotency.Run(ctx, s, key, req, func(ctx context.Context, tx pgx.Tx) (db.Charge, error) {
			calls++
			// WithTx runs the generated query in the store's transaction: the
			// row commits with the key, or not at all. The returned row is
			// stored as JSON and is what a retry gets back.
			return queries.WithTx(tx).CreateCharge(ctx, db.CreateChargeParams{
				Customer:       customer,
				IdempotencyKey: key,
				Amount:         req.Amount,
				Currency:       req.Currency,
			})
		})
	}

	fmt.Fprintf(w, "Charging customer %s with sqlc's CreateCharge inside idempotency.Run, on pgxstore.\n", customer)

	// 1. A new key: fn runs and the charge row commits with the key.
	first, err := charge("order-1", ChargeRequest{Amount: 10_00, Currency: "EUR"})
	if err != nil {
		return fmt.Errorf("step 1: %w", err)
	}
	fmt.Fprintf(w, "1. key order-1, 10.00 EUR: fn ran %d time, inserted charge %d (replayed=%t)\n",
		calls, first.Value.ID, first.Replayed)

	// 2. The client timed out and retries: fn does not run, and the answer
	// is the stored row, created_at included.
	calls = 0
	again, err := charge("order-1", ChargeRequest{Amount: 10_00, Currency: "EUR"})
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	if !again.Replayed || again.Value.ID != first.Value.ID || !again.Value.CreatedAt.Time.Equal(first.Value.CreatedAt.Time) {
		return fmt.Errorf("step 2: want a replay of %+v, got %+v", first, again)
	}
	fmt.Fprintf(w, "2. retry order-1: fn ran %d times, same charge %d (replayed=%t)\n",
		calls, again.Value.ID, again.Replayed)

	// 3. A bug reuses the key for another request: refused, nothing runs.
	calls = 0
	_, err = charge("order-1", ChargeRequest{Amount: 20_00, Currency: "EUR"})
	if !errors.Is(err, idempotency.ErrParamsMismatch) {
		return fmt.Errorf("step 3: want ErrParamsMismatch, got %v", err)
	}
	fmt.Fprintf(w, "3. key order-1, 20.00 EUR: refused (ErrParamsMismatch), fn ran %d times\n", calls)

	// The proof, read back through the generated queries: one row for the key.
	n, err := queries.CountChargesByKey(ctx, db.CountChargesByKeyParams{Customer: customer, IdempotencyKey: "order-1"})
	if err != nil {
		return fmt.Errorf("count charges: %w", err)
	}
	row, err := queries.GetCharge(ctx, first.Value.ID)
	if err != nil {
		return fmt.Errorf("get charge %d: %w", first.Value.ID, err)
	}
	fmt.Fprintf(w, "Charges with key order-1: %d (charge %d, %d.%02d %s)\n",
		n, row.ID, row.Amount/100, row.Amount%100, row.Currency)
	return nil
}
