package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/jmoiron/sqlx"
	_ "modernc.org/sqlite"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/migrations"
)

// openExampleDB opens a new SQLite database in a temporary folder, with the
// key table and a charges table.
func openExampleDB() (*sqlx.DB, func()) {
	dir, err := os.MkdirTemp("", "idempotency-example")
	if err != nil {
		log.Fatal(err)
	}
	dsn := "file:" + filepath.Join(dir, "app.db") + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=immediate"
	db := sqlx.MustOpen("sqlite", dsn)
	if err := migrations.Up(context.Background(), db); err != nil {
		log.Fatal(err)
	}
	db.MustExec(`CREATE TABLE charges (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount INTEGER NOT NULL)`)
	return db, func() { db.Close(); os.RemoveAll(dir) }
}

type Charge struct {
	ID     int64 `json:"id"`
	Amount int   `json:"amount"`
}

type ChargeRequest struct {
	Customer string `json:"customer"`
	Amount   int    `json:"amount"`
}

// createCharge writes the charge through tx, so it commits with the key.
func createCharge(req ChargeRequest) func(context.Context, *sqlx.Tx) (Charge, error) {
	return func(ctx context.Context, tx *sqlx.Tx) (Charge, error) {
		res, err := tx.ExecContext(ctx, `INSERT INTO charges (customer, amount) VALUES (?, ?)`, req.Customer, req.Amount)
		if err != nil {
			return Charge{}, err
		}
		id, err := res.LastInsertId()
		return Charge{ID: id, Amount: req.Amount}, err
	}
}

// A retried request replays the first answer instead of charging again, and
// the same key with another request is refused.
func Example() {
	db, done := openExampleDB()
	defer done()
	ctx := context.Background()
	store, err := idempotency.New(db)
	if err != nil {
		log.Fatal(err)
	}

	req := ChargeRequest{Customer: "cus_42", Amount: 1999}
	first, err := idempotency.Do(ctx, store, "order-1001", req, createCharge(req))
	fmt.Println("first:", first, err)

	retry, err := idempotency.Run(ctx, store, "order-1001", req, createCharge(req))
	fmt.Println("retry:", retry.Value, "replayed:", retry.Replayed, err)

	other := ChargeRequest{Customer: "cus_42", Amount: 5}
	_, err = idempotency.Do(ctx, store, "order-1001", other, createCharge(other))
	fmt.Println("other params:", errors.Is(err, idempotency.ErrParamsMismatch))

	var n int
	_ = db.Get(&n, `SELECT COUNT(*) FROM charges`)
	fmt.Println("charges:", n)
	// Output:
	// first: {1 1999} <nil>
	// retry: {1 1999} replayed: true <nil>
	// other params: true
	// charges: 1
}

// A final failure is stored like a value: the charge row is rolled back, and
// a retry gets the same decline without calling fn again.
func ExampleFinal() {
	db, done := openExampleDB()
	defer done()
	ctx := context.Background()
	store, _ := idempotency.New(db)

	calls := 0
	decline := func(ctx context.Context, tx *sqlx.Tx) (Charge, error) {
		calls++
		if _, err := createCharge(ChargeRequest{"cus_7", 500})(ctx, tx); err != nil {
			return Charge{}, err
		}
		return Charge{}, idempotency.FinalCode("card_declined", errors.New("your card was declined"))
	}
	for range 2 {
		_, err := idempotency.Do(ctx, store, "order-7", nil, decline)
		var final *idempotency.FinalError
		if errors.As(err, &final) {
			fmt.Println(final.Code+":", err)
		}
	}
	var n int
	_ = db.Get(&n, `SELECT COUNT(*) FROM charges`)
	fmt.Println("fn calls:", calls, "charges:", n)
	// Output:
	// card_declined: your card was declined
	// card_declined: your card was declined
	// fn calls: 1 charges: 0
}

// Scopes keep tenants' keys apart: the same key in two accounts names two
// calls.
func ExampleStore_Scope() {
	db, done := openExampleDB()
	defer done()
	ctx := context.Background()
	store, _ := idempotency.New(db)

	for _, account := range []string{"acct_a", "acct_b", "acct_a"} {
		req := ChargeRequest{Customer: account, Amount: 100}
		r, _ := idempotency.Run(ctx, store.Scope(account), "monthly-fee", req, createCharge(req))
		fmt.Println(account, "charge", r.Value.ID, "replayed:", r.Replayed)
	}
	// Output:
	// acct_a charge 1 replayed: false
	// acct_b charge 2 replayed: false
	// acct_a charge 1 replayed: true
}

// DoTx joins a transaction the service layer already holds: the key commits
// or rolls back with the rest of the unit of work.
func ExampleDoTx() {
	db, done := openExampleDB()
	defer done()
	ctx := context.Background()
	store, _ := idempotency.New(db)
	db.MustExec(`CREATE TABLE audit (what TEXT)`)

	placeOrder := func(key string) (Charge, error) {
		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			return Charge{}, err
		}
		defer tx.Rollback()
		req := ChargeRequest{Customer: "cus_9", Amount: 300}
		c, err := idempotency.DoTx(ctx, tx, store, key, req, createCharge(req))
		if err != nil {
			return Charge{}, err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit (what) VALUES ('order placed')`); err != nil {
			return Charge{}, err
		}
		return c, tx.Commit()
	}
	a, _ := placeOrder("order-9")
	b, _ := placeOrder("order-9")
	var charges, audits int
	_ = db.Get(&charges, `SELECT COUNT(*) FROM charges`)
	_ = db.Get(&audits, `SELECT COUNT(*) FROM audit`)
	fmt.Println(a == b, "charges:", charges, "audit rows:", audits)
	// Output:
	// true charges: 1 audit rows: 2
}
