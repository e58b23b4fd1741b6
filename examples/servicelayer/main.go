// Command servicelayer shows idempotency.DoTx (here its twin RunTx) inside a
// service method that already owns a transaction, its unit of work.
//
// PlaceOrder begins a transaction, writes the order, reserves stock through
// RunTx keyed by the client's request key, writes an audit row and commits.
// The key row is written in that same transaction, so it commits with the
// order or disappears with it:
//
//   - a retry of a unit of work that committed finds the key: the reserve
//     step is replayed, and the retry rolls back its own writes and returns
//     the first answer;
//
//   - a unit of work that rolled back leaves no key: a retry runs the
//     reserve step again.
//
//     go run ./examples/servicelayer
//     go run ./examples/servicelayer -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/migrations"
)

func main() { exampledb.Main("servicelayer", run) }

var schema = []string{
	`CREATE TABLE IF NOT EXISTS products (
		sku       VARCHAR(40) PRIMARY KEY,
		available BIGINT      NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS orders (
		id       VARCHAR(40) PRIMARY KEY,
		customer VARCHAR(40) NOT NULL,
		sku      VARCHAR(40) NOT NULL,
		qty      BIGINT      NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS reservations (
		id       VARCHAR(40) PRIMARY KEY,
		order_id VARCHAR(40) NOT NULL,
		sku      VARCHAR(40) NOT NULL,
		qty      BIGINT      NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS audit_log (
		id       VARCHAR(40) PRIMARY KEY,
		customer VARCHAR(40) NOT NULL,
		order_id VARCHAR(40) NOT NULL,
		action   VARCHAR(40) NOT NULL
	)`,
}

// Order is a request to place an order. It is the params of the reserve
// step: a retry with the same key must carry the same order.
type Order struct {
	Customer string `json:"customer"`
	SKU      string `json:"sku"`
	Qty      int64  `json:"qty"`
}

// Placed is PlaceOrder's answer, stored with the key by the reserve step.
type Placed struct {
	OrderID       string `json:"order_id"`
	ReservationID string `json:"reservation_id"`
}

// ErrOutOfStock is the reserve step's plain (not final) failure: the unit of
// work rolls back and a later retry may succeed.
var ErrOutOfStock = errors.New("out of stock")

// Service is an order service; each method is one unit of work, one
// transaction.
type Service struct {
	db    *sqlx.DB
	store *idempotency.Store

	// beforeCommit, when set, runs last in the unit of work. The demo uses
	// it to fail a unit of work after the reserve step, as a late
	// constraint violation or a lost connection would.
	beforeCommit func() error
}

// PlaceOrder places an order once per key. replayed reports that an earlier
// call with this key committed and this one returned its answer.
func (s *Service) PlaceOrder(ctx context.Context, key string, o Order) (p Placed, replayed bool, err error) {
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return Placed{}, false, err
	}
	// Undoes everything unless Commit ran first (then it is a no-op).
	defer func() { _ = tx.Rollback() }()

	orderID := exampledb.NewID("ord_")
	if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO orders (id, customer, sku, qty) VALUES (?, ?, ?, ?)`),
		orderID, o.Customer, o.SKU, o.Qty); err != nil {
		return Placed{}, false, err
	}

	// The reserve step runs in tx (under a savepoint) and writes the key
	// there too. Scope by customer: keys come from clients, and one
	// client's key must never answer another's request.
	res, err := idempotency.RunTx(ctx, tx, s.store.Scope(o.Customer), key, o, func(ctx context.Context, tx *sqlx.Tx) (Placed, error) {
		r, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE products SET available = available - ? WHERE sku = ? AND available >= ?`),
			o.Qty, o.SKU, o.Qty)
		if err != nil {
			return Placed{}, err
		}
		n, err := r.RowsAffected()
		if err != nil {
			return Placed{}, err
		}
		if n == 0 {
			return Placed{}, ErrOutOfStock
		}
		p := Placed{OrderID: orderID, ReservationID: exampledb.NewID("res_")}
		_, err = tx.ExecContext(ctx, tx.Rebind(`INSERT INTO reservations (id, order_id, sku, qty) VALUES (?, ?, ?, ?)`),
			p.ReservationID, orderID, o.SKU, o.Qty)
		return p, err
	})
	if err != nil {
		// Out of stock, a params mismatch, a conflict: abandon the order too.
		// (After a serialization failure or deadlock tx is unusable anyway;
		// the caller may run PlaceOrder again with the same key.)
		return Placed{}, false, err
	}
	if res.Replayed {
		// The key committed before, and with it the whole unit of work that
		// first used it: its order, reservation and audit row. This call's
		// order row would be a duplicate: roll it back (the deferred
		// Rollback) and answer as the first call did.
		return res.Value, true, nil
	}

	if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO audit_log (id, customer, order_id, action) VALUES (?, ?, ?, ?)`),
		exampledb.NewID("aud_"), o.Customer, orderID, "order_placed"); err != nil {
		return Placed{}, false, err
	}
	if s.beforeCommit != nil {
		if err := s.beforeCommit(); err != nil {
			return Placed{}, false, err
		}
	}
	if err := tx.Commit(); err != nil {
		return Placed{}, false, err
	}
	return res.Value, false, nil
}

func run(ctx context.Context, w io.Writer, db *sqlx.DB) error {
	if err := migrations.Up(ctx, db); err != nil {
		return err
	}
	for _, ddl := range schema {
		if _, err := db.ExecContext(ctx, ddl); err != nil {
			return fmt.Errorf("create tables: %w", err)
		}
	}
	store, err := idempotency.New(db)
	if err != nil {
		return err
	}
	svc := &Service{db: db, store: store}

	// A new customer and product per run keep reruns on one -dsn apart.
	customer, sku := exampledb.NewID("cus_"), exampledb.NewID("sku_")
	if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO products (sku, available) VALUES (?, ?)`), sku, 10); err != nil {
		return err
	}
	var queryErr error // the first failed query below, returned at the end
	count := func(query string, args ...any) (n int64) {
		if queryErr == nil {
			queryErr = db.GetContext(ctx, &n, db.Rebind(query), args...)
		}
		return n
	}
	stock := func() int64 { return count(`SELECT available FROM products WHERE sku = ?`, sku) }
	keys := func() int64 { return count(`SELECT COUNT(*) FROM idempotency_keys WHERE scope = ?`, customer) }

	fmt.Fprintf(w, "Customer %s orders %s (%d in stock) on %s.\n", customer, sku, stock(), db.DriverName())

	// 1. The first unit of work with key order-1 commits.
	first, replayed, err := svc.PlaceOrder(ctx, "order-1", Order{Customer: customer, SKU: sku, Qty: 3})
	if err != nil {
		return fmt.Errorf("step 1: %w", err)
	}
	fmt.Fprintf(w, "1. PlaceOrder(order-1, qty 3): committed order %s, reserve step ran (replayed=%t); stock %d\n",
		first.OrderID, replayed, stock())

	// 2. The client never saw the answer and retries the whole request.
	again, replayed, err := svc.PlaceOrder(ctx, "order-1", Order{Customer: customer, SKU: sku, Qty: 3})
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	if again != first || !replayed {
		return fmt.Errorf("step 2: want a replay of %+v, got %+v (replayed=%t)", first, again, replayed)
	}
	fmt.Fprintf(w, "2. retry order-1: reserve step replayed (replayed=%t), same order %s, retry's writes rolled back; stock %d\n",
		replayed, again.OrderID, stock())

	// 3. A unit of work fails after its reserve step ran.
	svc.beforeCommit = func() error { return errors.New("simulated: connection lost before COMMIT") }
	_, _, failed := svc.PlaceOrder(ctx, "order-2", Order{Customer: customer, SKU: sku, Qty: 2})
	svc.beforeCommit = nil
	if failed == nil {
		return errors.New("step 3: want the simulated failure")
	}
	fmt.Fprintf(w, "3. PlaceOrder(order-2, qty 2) failed after reserving (%v): all rolled back; keys stored %d (order-1's); stock %d\n",
		failed, keys(), stock())

	// 4. Its retry finds no key, so the reserve step runs again.
	second, replayed, err := svc.PlaceOrder(ctx, "order-2", Order{Customer: customer, SKU: sku, Qty: 2})
	if err != nil {
		return fmt.Errorf("step 4: %w", err)
	}
	fmt.Fprintf(w, "4. retry order-2: reserve step ran again (replayed=%t), committed order %s; stock %d\n",
		replayed, second.OrderID, stock())

	fmt.Fprintf(w, "Rows for this customer: orders=%d reservations=%d audit=%d keys=%d; stock %d\n",
		count(`SELECT COUNT(*) FROM orders WHERE customer = ?`, customer),
		count(`SELECT COUNT(*) FROM reservations WHERE sku = ?`, sku),
		count(`SELECT COUNT(*) FROM audit_log WHERE customer = ?`, customer),
		keys(), stock())
	return queryErr
}
