package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/examples/internal/exampletest"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestExample runs the example on its default SQLite file and on every
// backend, and checks what it printed and what it left in the database.
func TestExample(t *testing.T) { exampletest.Each(t, "outbox", check) }

func check(t *testing.T, _ testdb.Backend, db *sqlx.DB) {
	t.Helper()
	text := exampletest.Output(t, db, run)
	ctx := context.Background()
	exampletest.Contains(t, text,
		"2. client retries order-1: replayed=true, same outbox row ob_",
		"fn ran 1 time so far",
		"(order-1): provider made charge py_",
		"crash before marking ob_",
		"(order-1): same key, so the provider replayed charge py_",
		"(order-2): provider made charge py_",
		"6. provider got 3 requests and made 2 charges; outbox: 2 rows, 0 unsent.",
	)
	// The database agrees: two charges, two outbox rows, both sent, each
	// with its own provider charge (the re-send did not make a third).
	var charges, keys, unsent, refs int
	for q, dst := range map[string]*int{
		`SELECT COUNT(*) FROM charges`:                                              &charges,
		`SELECT COUNT(*) FROM idempotency_keys`:                                     &keys,
		`SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL`:                         &unsent,
		`SELECT COUNT(DISTINCT provider_ref) FROM outbox WHERE sent_at IS NOT NULL`: &refs,
	} {
		if err := db.GetContext(ctx, dst, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if charges != 2 || keys != 2 || unsent != 0 || refs != 2 {
		t.Errorf("charges=%d keys=%d unsent=%d provider refs=%d; want 2, 2, 0, 2", charges, keys, unsent, refs)
	}
}

// TestRelayCrashAfterEverySend kills the relay after every send: each row is
// sent twice, under one key, and the provider charges once per row.
func TestRelayCrashAfterEverySend(t *testing.T) {
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
			const rows = 4
			for i := range rows {
				if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO outbox (id, customer, payload) VALUES (?, ?, ?)`),
					newOutboxID(), "cus_test", fmt.Sprintf(`{"order":"order-%d","amount":100}`, i)); err != nil {
					t.Fatal(err)
				}
			}
			p := &provider{charges: map[string]string{}}
			srv := httptest.NewServer(p)
			defer srv.Close()
			r := &relay{db: db, client: &http.Client{Timeout: 10 * time.Second}, url: srv.URL, w: io.Discard}
			sent := map[string]bool{}
			r.crash = func(id string) bool {
				first := !sent[id]
				sent[id] = true
				return first
			}
			passes := 0
			for {
				passes++
				err := r.pass(ctx)
				if err == nil {
					break
				}
				if !errors.Is(err, errCrash) || passes > rows+1 {
					t.Fatalf("pass %d: %v", passes, err)
				}
			}
			requests, charges := p.stats()
			var unsent int
			if err := db.GetContext(ctx, &unsent, `SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL`); err != nil {
				t.Fatal(err)
			}
			if passes != rows+1 || requests != 2*rows || charges != rows || unsent != 0 {
				t.Errorf("passes=%d requests=%d charges=%d unsent=%d; want %d, %d, %d, 0",
					passes, requests, charges, unsent, rows+1, 2*rows, rows)
			}
		})
	}
}
