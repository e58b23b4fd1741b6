// Command quickstart shows, step by step, what an idempotency key does for a
// request that charges a customer: the first call charges, a retry replays
// the same answer without charging again, a reused key with another request
// is refused, a concurrent twin waits and replays, and a declined card is
// remembered as declined.
//
// It needs no server: by default it runs on an embedded SQLite database in a
// temporary file. Point it at a server with -driver and -dsn:
//
//	go run ./examples/quickstart
//	go run ./examples/quickstart -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
//	go run ./examples/quickstart -driver mysql -dsn 'root@tcp(127.0.0.1:3306)/test'
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/migrations"
)

func main() { exampledb.Main("quickstart", run) }

// The business table. Keeping the idempotency key on the row is optional,
// but it lets support staff find the charge a client's request made.
const schema = `CREATE TABLE IF NOT EXISTS charges (
	id              VARCHAR(40)  PRIMARY KEY,
	customer        VARCHAR(40)  NOT NULL,
	idempotency_key VARCHAR(255) NOT NULL,
	amount          BIGINT       NOT NULL
)`

// ChargeRequest is what the client sends. The store keeps a fingerprint of
// it with the key, so a retry must send the same request.
type ChargeRequest struct {
	Amount int64 `json:"amount"` // in cents
}

// Charge is the answer. It is stored as JSON with the key and decoded on
// every path, so a replay returns exactly what the first call returned.
type Charge struct {
	ID     string `json:"id"`
	Amount int64  `json:"amount"`
}

// errDeclined stands for the card network saying no.
var errDeclined = errors.New("card declined")

func run(ctx context.Context, w io.Writer, db *sqlx.DB) error {
	// The key table and the business table live in the same database, so the
	// key and the charge commit in one transaction.
	if err := migrations.Up(ctx, db); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("create charges: %w", err)
	}
	store, err := idempotency.New(db)
	if err != nil {
		return err
	}
	// Keys belong to a customer: another customer's "order-1" is another
	// call. A new customer per run also keeps reruns on one -dsn apart.
	customer := exampledb.NewID("cus_")
	s := store.Scope(customer)

	var calls atomic.Int64 // how many times fn ran
	charge := func(key string, req ChargeRequest, work time.Duration) (idempotency.Result[Charge], error) {
		return idempotency.Run(ctx, s, key, req, func(ctx context.Context, tx *sqlx.Tx) (Charge, error) {
			calls.Add(1)
			time.Sleep(work) // a slow charge, so that step 4's twin arrives while it runs
			c := Charge{ID: exampledb.NewID("ch_"), Amount: req.Amount}
			// Every write goes through tx: it commits with the key, or not at
			// all. tx.Rebind turns ? into $1 for the postgres and pgx drivers
			// (sqlx does not know the name pgx/v5; register it with
			// sqlx.BindDriver if you use it) and leaves ? for mysql and sqlite.
			_, err := tx.ExecContext(ctx, tx.Rebind(
				`INSERT INTO charges (id, customer, idempotency_key, amount) VALUES (?, ?, ?, ?)`),
				c.ID, customer, key, c.Amount)
			if err != nil {
				return Charge{}, err
			}
			if req.Amount > 100_00 {
				// Final: roll back the charge row but store the failure, so a
				// retry gets "declined" again instead of another attempt.
				return Charge{}, &idempotency.FinalError{Code: "card_declined", Err: errDeclined}
			}
			return c, nil
		})
	}
	ran := func(before int64) int64 { return calls.Load() - before }
	times := func(n int64) string {
		if n == 1 {
			return "1 time"
		}
		return fmt.Sprintf("%d times", n)
	}

	fmt.Fprintf(w, "Charging customer %s on %s; each step calls idempotency.Run.\n", customer, db.DriverName())

	// 1. A new key: fn runs and the charge row commits with the key.
	n := calls.Load()
	first, err := charge("order-1", ChargeRequest{Amount: 10_00}, 0)
	if err != nil {
		return fmt.Errorf("step 1: %w", err)
	}
	fmt.Fprintf(w, "1. key order-1, $10: fn ran %d time, charged %s (replayed=%t)\n", ran(n), first.Value.ID, first.Replayed)

	// 2. The client timed out and retries: same key, same request.
	n = calls.Load()
	again, err := charge("order-1", ChargeRequest{Amount: 10_00}, 0)
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	if again.Value != first.Value || !again.Replayed {
		return fmt.Errorf("step 2: want a replay of %+v, got %+v", first, again)
	}
	fmt.Fprintf(w, "2. retry order-1, $10: fn ran %d times, same charge %s (replayed=%t)\n", ran(n), again.Value.ID, again.Replayed)

	// 3. A bug reuses the key for another request: refused, nothing runs.
	n = calls.Load()
	_, err = charge("order-1", ChargeRequest{Amount: 20_00}, 0)
	if !errors.Is(err, idempotency.ErrParamsMismatch) {
		return fmt.Errorf("step 3: want ErrParamsMismatch, got %v", err)
	}
	fmt.Fprintf(w, "3. key order-1, $20: params mismatch (ErrParamsMismatch), fn ran %d times\n", ran(n))

	// 4. Two requests with one key at the same moment (a double click): one
	// runs fn, the other waits for its commit and replays its answer. (With
	// TiDB's optimistic transactions, which lock nothing before COMMIT, both
	// run fn; the first to commit wins and the other replays it.)
	n = calls.Load()
	var (
		wg      sync.WaitGroup
		results [2]idempotency.Result[Charge]
		errs    [2]error
	)
	for i := range results {
		wg.Go(func() { results[i], errs[i] = charge("order-2", ChargeRequest{Amount: 5_00}, 200*time.Millisecond) })
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return fmt.Errorf("step 4: %w", err)
	}
	if results[0].Value != results[1].Value || results[0].Replayed == results[1].Replayed {
		return fmt.Errorf("step 4: want one fresh and one replayed answer, got %+v", results)
	}
	fmt.Fprintf(w, "4. two concurrent calls, key order-2: fn ran %s; one replayed the other's charge %s\n", times(ran(n)), results[0].Value.ID)

	// 5. A declined card is a final answer: stored and replayed, not retried.
	n = calls.Load()
	_, err = charge("order-3", ChargeRequest{Amount: 500_00}, 0)
	var final *idempotency.FinalError
	if !errors.As(err, &final) {
		return fmt.Errorf("step 5: want a FinalError, got %v", err)
	}
	fmt.Fprintf(w, "5. key order-3, $500: %q, fn ran %d time, its charge row rolled back\n", err, ran(n))
	n = calls.Load()
	retry, err := charge("order-3", ChargeRequest{Amount: 500_00}, 0)
	if !errors.As(err, &final) || final.Code != "card_declined" {
		return fmt.Errorf("step 5: want the stored card_declined, got %v", err)
	}
	fmt.Fprintf(w, "   retry order-3: %q again (code %s), fn ran %d times (replayed=%t)\n", err, final.Code, ran(n), retry.Replayed)

	// The proof: one charge row per key that succeeded, whatever the retries.
	fmt.Fprint(w, "Charges per key:")
	for _, key := range []string{"order-1", "order-2", "order-3"} {
		var count int
		err := db.GetContext(ctx, &count, db.Rebind(
			`SELECT COUNT(*) FROM charges WHERE customer = ? AND idempotency_key = ?`), customer, key)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, " %s=%d", key, count)
	}
	fmt.Fprintf(w, " (fn ran %d times for 7 calls)\n", calls.Load())
	return nil
}
