package pgxstore

import (
	"context"
	"hash/fnv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// backend is the Postgres server the tests run on, reached through pgx.
var backend = testdb.Backend{Name: "pgx", Driver: "pgx", Kind: "postgres"}

// testDSN returns the DSN of a fresh schema, migrated through Up, with the
// charges table that fn writes to in the tests.
func testDSN(t testing.TB) string {
	t.Helper()
	dsn := backend.DSN(t)
	pool := openPool(t, dsn, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := Up(ctx, pool); err != nil {
		t.Fatalf("Up: %v", err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE charges (k text NOT NULL, amount integer NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return dsn
}

// openPool opens a pool on dsn, after edit changes its configuration. At
// cleanup it checks that no connection is still acquired: every path of
// the driver must give its connection back.
func openPool(t testing.TB, dsn string, edit func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// pgxpool destroys a broken connection in the background, and
		// counts it acquired until it is closed.
		deadline := time.Now().Add(5 * time.Second)
		for pool.Stat().AcquiredConns() != 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := pool.Stat().AcquiredConns(); n != 0 {
			t.Errorf("%d connections still acquired at the end of the test", n)
		}
		pool.Close()
	})
	return pool
}

// testPool is a pool on a fresh, migrated schema.
func testPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	return openPool(t, testDSN(t), nil)
}

func testDriver(t *testing.T, pool *pgxpool.Pool, cfg dialects.Config) *driver {
	t.Helper()
	if cfg.Table == "" {
		cfg.Table = dialects.DefaultTable
	}
	d, err := newDriver(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// key is a key in the test's scope, with a lock number derived from both
// (any stable hash will do for a test). Each test has a schema of its own,
// but advisory locks are the database's: without the scope, two tests that
// use one key would hold each other's lock.
func key(t *testing.T, k string) dialects.Key {
	h := fnv.New64a()
	_, _ = h.Write([]byte(t.Name() + "\x00" + k))
	return dialects.Key{Scope: t.Name(), Key: k, Lock: int64(h.Sum64())}
}

// count counts rows of a table with k = key, committed, outside any test
// transaction.
func count(t *testing.T, pool *pgxpool.Pool, table, key string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table+` WHERE `+column(table)+` = $1`, key).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func column(table string) string {
	if table == "charges" {
		return "k"
	}
	return "key"
}

// startProxy starts a fault proxy in front of target, stopped at cleanup.
// It counts round trips at the wire and cuts a connection when armed.
func startProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	proxy, err := faultproxy.Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	return proxy
}
