package idempotency_test

import (
	"context"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestFlowsBesideAnotherKeyTable: with WithTable, flows use the flow
// tables named after the key table (dialects.FlowTables), and leave the
// default ones alone.
func TestFlowsBesideAnotherKeyTable(t *testing.T) {
	ctx := context.Background()
	for _, b := range testdb.Backends() {
		if b.Kind != "postgres" {
			continue
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			db := b.Open(t)
			for _, q := range []string{
				`CREATE TABLE billing_keys (LIKE idempotency_keys INCLUDING ALL)`,
				`CREATE TABLE billing_flows (LIKE idempotency_flows INCLUDING ALL)`,
				`CREATE TABLE billing_steps (LIKE idempotency_steps INCLUDING ALL)`,
			} {
				db.MustExec(q)
			}
			s, err := idempotency.New(db, idempotency.WithTable("billing_keys"))
			if err != nil {
				t.Fatal(err)
			}
			f := idempotency.NewFlow("bill", func(ctx context.Context, st *idempotency.Steps[*sqlx.Tx], n int) (int, error) {
				return idempotency.Step(st, "one", func(context.Context, *sqlx.Tx) (int, error) { return n + 1, nil })
			})
			if v, err := f.Do(ctx, s, "k", 1); err != nil || v != 2 {
				t.Fatalf("got %v, %v; want 2", v, err)
			}
			if r, err := f.Run(ctx, s, "k", 1); err != nil || !r.Replayed {
				t.Fatalf("replay: %+v, %v", r, err)
			}
			for table, want := range map[string]int{"billing_keys": 1, "idempotency_keys": 0, "billing_flows": 0, "idempotency_flows": 0} {
				if n := count(t, db, `SELECT COUNT(*) FROM `+table); n != want {
					t.Errorf("%s has %d rows; want %d", table, n, want)
				}
			}
		})
	}
}

// count runs a query that returns one integer.
func count(t *testing.T, db *sqlx.DB, q string) int {
	t.Helper()
	var n int
	if err := db.Get(&n, q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}
