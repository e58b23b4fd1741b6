package inbox_test

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
	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/migrations"
)

// A message delivered twice (its first ack was lost) is applied once; a
// message that can never apply is dead-lettered, and so is its
// redelivery, without running the handler again.
func ExampleInbox_Handle() {
	dir, err := os.MkdirTemp("", "inbox-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db := sqlx.MustOpen("sqlite", "file:"+filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(5000)&_txlock=immediate")
	defer db.Close()
	ctx := context.Background()
	if err := migrations.Up(ctx, db); err != nil {
		log.Fatal(err)
	}
	db.MustExec(`CREATE TABLE credits (account TEXT NOT NULL, amount INTEGER NOT NULL)`)
	store, err := idempotency.New(db)
	if err != nil {
		log.Fatal(err)
	}
	in, err := inbox.New(store)
	if err != nil {
		log.Fatal(err)
	}

	credit := func(account string, amount int) func(context.Context, *sqlx.Tx) error {
		return func(ctx context.Context, tx *sqlx.Tx) error {
			if amount <= 0 {
				return idempotency.Final(errors.New("a credit must be positive"))
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO credits (account, amount) VALUES (?, ?)`, account, amount)
			return err
		}
	}
	for attempt := 1; attempt <= 2; attempt++ {
		v := in.Handle(ctx, inbox.Delivery{Source: "credits", ID: "msg-1", Attempt: attempt}, credit("alice", 100))
		fmt.Printf("msg-1, delivery %d: %s (replayed %t)\n", attempt, v.Action, v.Replayed)
	}
	for attempt := 1; attempt <= 2; attempt++ {
		v := in.Handle(ctx, inbox.Delivery{Source: "credits", ID: "msg-2", Attempt: attempt}, credit("bob", -5))
		fmt.Printf("msg-2, delivery %d: %s (replayed %t): %v\n", attempt, v.Action, v.Replayed, v.Err)
	}
	var total int
	if err := db.Get(&total, `SELECT COALESCE(SUM(amount), 0) FROM credits`); err != nil {
		log.Fatal(err)
	}
	fmt.Println("credited:", total)
	// Output:
	// msg-1, delivery 1: ack (replayed false)
	// msg-1, delivery 2: ack (replayed true)
	// msg-2, delivery 1: dead-letter (replayed false): a credit must be positive
	// msg-2, delivery 2: dead-letter (replayed true): a credit must be positive
	// credited: 100
}
