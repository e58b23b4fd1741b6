package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/sqlstore"
)

// fn gets a plain *sql.Tx: the charge commits with the key, and a retry
// replays the answer without charging again.
func Example() {
	dir, err := os.MkdirTemp("", "sqlstore-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if err := sqlstore.Up(ctx, db, "sqlite"); err != nil {
		log.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE charges (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)`); err != nil {
		log.Fatal(err)
	}
	store, err := sqlstore.New(db, "sqlite")
	if err != nil {
		log.Fatal(err)
	}
	charge := func(ctx context.Context, tx *sql.Tx) (int64, error) {
		res, err := tx.ExecContext(ctx, `INSERT INTO charges (amount) VALUES (?)`, 1000)
		if err != nil {
			return 0, err
		}
		return res.LastInsertId()
	}
	for range 2 {
		res, err := idempotency.Run(ctx, store, "order-1", 1000, charge)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("charge %d, replayed: %v\n", res.Value, res.Replayed)
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM charges`).Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println("charges:", n)
	// Output:
	// charge 1, replayed: false
	// charge 1, replayed: true
	// charges: 1
}
