package idempotency_test

import (
	"context"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestKeyTablesDoNotShareLocks: Postgres advisory locks are one number
// space per database, so the same (scope, key) in two key tables of one
// database must not take the same lock: a call on one table would wait for
// a twin that is not its twin.
func TestKeyTablesDoNotShareLocks(t *testing.T) {
	ctx := context.Background()
	for _, b := range testdb.Backends() {
		if b.Kind != "postgres" {
			continue
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			db := b.Open(t)
			if _, err := db.Exec(`CREATE TABLE other_keys (LIKE idempotency_keys INCLUDING ALL)`); err != nil {
				t.Fatal(err)
			}
			main, err := idempotency.New(db)
			if err != nil {
				t.Fatal(err)
			}
			other, err := idempotency.New(db, idempotency.WithTable("other_keys"), idempotency.WithWait(0))
			if err != nil {
				t.Fatal(err)
			}
			claimed, release := make(chan struct{}), make(chan struct{})
			done := make(chan error, 1)
			go func() {
				_, err := idempotency.Do(ctx, main, "k", nil, func(context.Context, *sqlx.Tx) (int, error) {
					close(claimed)
					<-release
					return 1, nil
				})
				done <- err
			}()
			<-claimed
			v, err := idempotency.Do(ctx, other, "k", nil, func(context.Context, *sqlx.Tx) (int, error) { return 2, nil })
			close(release)
			if err != nil || v != 2 {
				t.Errorf("key k in another table while k is held in idempotency_keys: %v, %v; want 2 at once", v, err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the holder did not finish")
			}
		})
	}
}
