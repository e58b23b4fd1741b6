package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

// A flow charges a card with a payment provider between two writes: the
// charge row, then the provider's authorization, then the receipt. The
// first run fails at the provider; the retry resumes after the recorded
// charge row, calls the provider again with the same key, and finishes;
// a later retry replays the answer.
func ExampleNewFlow() {
	db, done := openExampleDB()
	defer done()
	store, err := idempotency.New(db)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	down := true // the provider's first answer is a network error
	keys := map[string]int{}
	authorize := func(key string, amount int) (string, error) {
		keys[key]++
		if down {
			down = false
			return "", errors.New("provider unreachable")
		}
		return "auth-1", nil
	}

	checkout := idempotency.NewFlow("checkout", func(ctx context.Context, s *idempotency.Steps[*sqlx.Tx], req ChargeRequest) (string, error) {
		charge, err := idempotency.Step(s, "charge", createCharge(req))
		if err != nil {
			return "", err
		}
		auth, err := idempotency.Call(s, "authorize", func(ctx context.Context, key string) (string, error) {
			return authorize(key, req.Amount) // the same key on every run
		})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("charge %d authorized as %s", charge.ID, auth), nil
	})

	req := ChargeRequest{Customer: "cus_1", Amount: 500}
	s := store.Scope(req.Customer)
	_, err = checkout.Do(ctx, s, "order-1", req)
	fmt.Println("first run:", err)
	r, err := checkout.Run(ctx, s, "order-1", req)
	fmt.Println("retry:", r.Value, r.Replayed, err)
	r, err = checkout.Run(ctx, s, "order-1", req)
	fmt.Println("again:", r.Value, r.Replayed, err)

	var rows int
	if err := db.Get(&rows, `SELECT COUNT(*) FROM charges`); err != nil {
		log.Fatal(err)
	}
	fmt.Println("charge rows:", rows, "provider keys:", len(keys))
	// Output:
	// first run: provider unreachable
	// retry: charge 1 authorized as auth-1 false <nil>
	// again: charge 1 authorized as auth-1 true <nil>
	// charge rows: 1 provider keys: 1
}
