package pgxstore

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency/migrations"
)

// TestUp: Up migrates through a pool of one connection (goose holds its lock
// and migrates on the same one), is idempotent, runs from many pools at
// once, records its version in the migrations package's own table, and
// leaves the pool open.
func TestUp(t *testing.T) {
	t.Parallel()
	dsn := backend.DSN(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	pools := make([]*pgxpool.Pool, 4)
	for i := range pools {
		pools[i] = openPool(t, dsn, func(c *pgxpool.Config) { c.MaxConns = 1 })
		wg.Go(func() {
			if err := Up(ctx, pools[i]); err != nil {
				t.Errorf("Up from pool %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if err := Up(ctx, pools[0]); err != nil {
		t.Fatalf("Up again: %v", err)
	}
	var version int64
	if err := pools[0].QueryRow(ctx, `SELECT max(version_id) FROM `+migrations.VersionTable).Scan(&version); err != nil || version < 2 {
		t.Fatalf("version %d, %v", version, err)
	}
	if _, err := pools[0].Exec(ctx, `SELECT idempotency_claim(1, '', '')`); err != nil {
		t.Fatalf("the claim function after Up: %v", err)
	}
	if err := Up(ctx, nil); err == nil {
		t.Fatal("Up(nil) succeeded")
	}
}
