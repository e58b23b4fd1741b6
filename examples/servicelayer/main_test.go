package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/examples/internal/exampletest"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestExample runs the example on its default SQLite file and on every
// backend, and checks what it printed and what it left in the database.
func TestExample(t *testing.T) { exampletest.Each(t, "servicelayer", check) }

func check(t *testing.T, _ testdb.Backend, db *sqlx.DB) {
	t.Helper()
	text := exampletest.Output(t, db, run)
	ctx := context.Background()
	exampletest.Contains(t, text,
		"(10 in stock)",
		"reserve step ran (replayed=false); stock 7",
		"2. retry order-1: reserve step replayed (replayed=true), same order ord_",
		"all rolled back; keys stored 1 (order-1's); stock 7",
		"4. retry order-2: reserve step ran again (replayed=false), committed order ord_",
		"orders=2 reservations=2 audit=2 keys=2; stock 5",
	)
	// The database agrees, counted over every row, not just the run's.
	counts := map[string]int{}
	for _, table := range []string{"orders", "reservations", "audit_log", "idempotency_keys"} {
		var n int
		if err := db.GetContext(ctx, &n, "SELECT COUNT(*) FROM "+table); err != nil {
			t.Fatal(err)
		}
		counts[table] = n
	}
	var stock int
	if err := db.GetContext(ctx, &stock, `SELECT SUM(available) FROM products`); err != nil {
		t.Fatal(err)
	}
	if counts["orders"] != 2 || counts["reservations"] != 2 || counts["audit_log"] != 2 || counts["idempotency_keys"] != 2 || stock != 5 {
		t.Errorf("counts %v, stock %d; want 2 of each and stock 5", counts, stock)
	}
}

// TestConcurrentRetries sends the same PlaceOrder from several goroutines at
// once: one unit of work commits, the others replay it and roll back. With
// optimistic transactions (TiDB) the units of work meet at their own COMMIT
// instead, where all but one fail with a write conflict; as DoTx says, the
// caller then runs its unit of work again, and that run replays.
func TestConcurrentRetries(t *testing.T) {
	t.Parallel()
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			db := b.Open(t)
			for _, ddl := range schema {
				if _, err := db.ExecContext(ctx, ddl); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := db.ExecContext(ctx, `INSERT INTO products (sku, available) VALUES ('sku_1', 10)`); err != nil {
				t.Fatal(err)
			}
			store, err := idempotency.New(db)
			if err != nil {
				t.Fatal(err)
			}
			svc := &Service{db: db, store: store}
			order := Order{Customer: "cus_1", SKU: "sku_1", Qty: 1}
			d, err := dialects.Open(b.Driver, dialects.DefaultTable)
			if err != nil {
				t.Fatal(err)
			}
			place := func() (Placed, bool, error) {
				for attempt := 1; ; attempt++ {
					p, replayed, err := svc.PlaceOrder(ctx, "order-1", order)
					if err == nil || !b.Optimistic() || attempt == 10 || d.Classify(err) != dialects.Retry {
						return p, replayed, err
					}
				}
			}

			const n = 4
			var (
				wg       sync.WaitGroup
				placed   [n]Placed
				replayed [n]bool
				errs     [n]error
			)
			for i := range n {
				wg.Go(func() { placed[i], replayed[i], errs[i] = place() })
			}
			wg.Wait()
			fresh := 0
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("call %d: %v", i, errs[i])
				}
				if placed[i] != placed[0] {
					t.Errorf("call %d answered %+v, call 0 %+v", i, placed[i], placed[0])
				}
				if !replayed[i] {
					fresh++
				}
			}
			var orders, reservations, stock int
			for q, dst := range map[string]*int{
				`SELECT COUNT(*) FROM orders`:       &orders,
				`SELECT COUNT(*) FROM reservations`: &reservations,
				`SELECT available FROM products`:    &stock,
			} {
				if err := db.GetContext(ctx, dst, q); err != nil {
					t.Fatal(err)
				}
			}
			if fresh != 1 || orders != 1 || reservations != 1 || stock != 9 {
				t.Errorf("fresh answers=%d orders=%d reservations=%d stock=%d; want 1, 1, 1, 9", fresh, orders, reservations, stock)
			}
		})
	}
}
