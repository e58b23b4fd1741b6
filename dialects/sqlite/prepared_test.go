package sqlite_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/dialects/sqlite"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/migrations"
)

// TestPreparedStatements: the claim, the save and the read are prepared
// once per connection and run prepared from then on, in Do's transactions,
// in the caller's (DoTx) and outside any. With one connection in the pool
// nothing waits for a second; a store made before its table exists
// prepares once the table does.
func TestPreparedStatements(t *testing.T) {
	registerCounting.Do(func() {
		probe, err := sql.Open("sqlite", "")
		if err != nil {
			t.Fatal(err)
		}
		counting.inner = probe.Driver()
		_ = probe.Close()
		sql.Register("sqlite-counting", counting)
		dialects.Register("sqlite-counting", func(table string) dialects.Dialect { return sqlite.New(table) })
	})
	c := counting
	db := testdb.Backend{Name: "sqlite-counting", Driver: "sqlite-counting", Kind: "sqlite"}.Connect(t, testdb.SQLiteDSN(filepath.Join(t.TempDir(), "test.db")))
	db.SetMaxOpenConns(1)
	s, err := idempotency.New(db)
	if err != nil {
		t.Fatal(err)
	}
	fn := func(ctx context.Context, tx *sqlx.Tx) (int, error) {
		_, err := tx.ExecContext(ctx, `INSERT INTO charges (ref) VALUES ('x')`)
		return 1, err
	}
	if _, err := idempotency.Do(ctx, s, "before", nil, fn); err == nil || !strings.Contains(err.Error(), "no such table") {
		t.Fatalf("a call before the table exists: %v; want no such table", err)
	}
	if err := migrations.Up(ctx, db); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE charges (ref TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	c.reset()
	for i := range 10 {
		key := fmt.Sprint("k", i)
		if _, err := idempotency.Do(ctx, s, key, nil, fn); err != nil {
			t.Fatal(err)
		}
		if r, err := idempotency.Run(ctx, s, key, nil, fn); err != nil || !r.Replayed {
			t.Fatalf("replay %s: %v, %v", key, r.Replayed, err)
		}
		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := idempotency.DoTx(ctx, tx, s, "tx"+key, nil, fn); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	prepared, unprepared := c.counts()
	d := sqlite.New(dialects.DefaultTable)
	for _, q := range d.Statements() {
		if prepared[q] != 1 || unprepared[q] != 0 {
			t.Errorf("prepared %d times, sent unprepared %d times over 30 calls on one connection; want 1 and 0:\n%s", prepared[q], unprepared[q], q)
		}
	}
}

var (
	registerCounting sync.Once
	counting         = &countingDriver{}
)

// countingDriver is a database/sql driver around modernc.org/sqlite's that
// counts, per statement, how often it is prepared and how often it is sent
// to be prepared and run at once.
type countingDriver struct {
	inner      driver.Driver
	mu         sync.Mutex
	prepared   map[string]int
	unprepared map[string]int
}

func (c *countingDriver) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prepared, c.unprepared = map[string]int{}, map[string]int{}
}

func (c *countingDriver) counts() (prepared, unprepared map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.prepared, c.unprepared
}

func (c *countingDriver) count(m *map[string]int, query string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[query]++
}

func (c *countingDriver) Open(name string) (driver.Conn, error) {
	conn, err := c.inner.Open(name)
	if err != nil {
		return nil, err
	}
	full, ok := conn.(interface {
		driver.ConnPrepareContext
		driver.ConnBeginTx
		driver.ExecerContext
		driver.QueryerContext
	})
	if !ok {
		_ = conn.Close()
		return nil, errors.New("the sqlite driver's connection lacks a method the test counts")
	}
	return &countingConn{Conn: conn, full: full, c: c}, nil
}

type countingConn struct {
	driver.Conn
	full interface {
		driver.ConnPrepareContext
		driver.ConnBeginTx
		driver.ExecerContext
		driver.QueryerContext
	}
	c *countingDriver
}

func (cc *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st, err := cc.full.PrepareContext(ctx, query)
	if err == nil {
		cc.c.count(&cc.c.prepared, query)
	}
	return st, err
}

func (cc *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return cc.full.BeginTx(ctx, opts)
}

func (cc *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	cc.c.count(&cc.c.unprepared, query)
	return cc.full.ExecContext(ctx, query, args)
}

func (cc *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	cc.c.count(&cc.c.unprepared, query)
	return cc.full.QueryContext(ctx, query, args)
}
