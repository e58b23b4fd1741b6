package conformance

import (
	"context"
	"io"
	"log"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
)

// SQL is the harness of a database/sql driver: the store idempotency.New
// makes on b's database.
func SQL(b testdb.Backend) Harness[*sqlx.Tx] {
	return Harness[*sqlx.Tx]{Name: b.Name, Kind: b.Kind, Optimistic: b.Optimistic(),
		Open: func(t testing.TB) Env[*sqlx.Tx] { return OpenSQL(t, b) }}
}

// SQLEnv is a database of a database/sql driver, reached through sqlx. The
// suites of the packages that build on the sqlx store (the HTTP adapter)
// use it too.
type SQLEnv struct {
	testdb.Backend
	DB  *sqlx.DB
	dsn string
}

var _ Env[*sqlx.Tx] = (*SQLEnv)(nil)

// OpenSQL returns a fresh, migrated database of b's with the charges table
// (testdb.Charges), for this test alone.
func OpenSQL(t testing.TB, b testdb.Backend) *SQLEnv {
	t.Helper()
	return OpenSQLDSN(t, b, b.DSN(t))
}

// OpenSQLDSN is OpenSQL on the empty database that dsn reaches.
func OpenSQLDSN(t testing.TB, b testdb.Backend, dsn string) *SQLEnv {
	t.Helper()
	e := &SQLEnv{Backend: b, DB: b.OpenDSN(t, dsn), dsn: dsn}
	e.Exec(t, testdb.Charges)
	return e
}

// NewStore returns idempotency.New(e.DB, opts...).
func (e *SQLEnv) NewStore(t testing.TB, opts ...idempotency.Option) *idempotency.Store {
	t.Helper()
	s, err := idempotency.New(e.DB, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Charge inserts (ref, amount) into charges through tx.
func (e *SQLEnv) Charge(ctx context.Context, tx *sqlx.Tx, ref string, amount int) error {
	insert := `INSERT INTO charges (ref, amount) VALUES (?, ?)`
	if e.Kind == "postgres" {
		insert = `INSERT INTO charges (ref, amount) VALUES ($1, $2)`
	}
	_, err := tx.ExecContext(ctx, insert, ref, amount)
	return err
}

// ExecTx runs query through tx.
func (e *SQLEnv) ExecTx(ctx context.Context, tx *sqlx.Tx, query string) error {
	_, err := tx.ExecContext(ctx, query)
	return err
}

// Exec runs query on the database, outside any transaction.
func (e *SQLEnv) Exec(t testing.TB, query string) {
	t.Helper()
	if _, err := e.DB.Exec(query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// Count runs a query that returns one integer.
func (e *SQLEnv) Count(t testing.TB, query string) int {
	t.Helper()
	var n int
	if err := e.DB.Get(&n, query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// Begin begins a transaction of the caller's.
func (e *SQLEnv) Begin(ctx context.Context) (*sqlx.Tx, error) { return e.DB.BeginTxx(ctx, nil) }

// Commit commits tx.
func (e *SQLEnv) Commit(_ context.Context, tx *sqlx.Tx) error { return tx.Commit() }

// Rollback rolls tx back.
func (e *SQLEnv) Rollback(_ context.Context, tx *sqlx.Tx) error { return tx.Rollback() }

// Hold takes a connection out of the pool until release.
func (e *SQLEnv) Hold(ctx context.Context) (func(), error) {
	c, err := e.DB.Connx(ctx)
	if err != nil {
		return nil, err
	}
	return func() { _ = c.Close() }, nil
}

// The MySQL driver logs every connection a proxy cuts, through a logger of
// its package that it reads whenever it parses a DSN: set it before any
// test runs (setting it from a test raced with others opening databases).
func init() {
	_ = mysql.SetLogger(log.New(io.Discard, "", 0))
}

// Reopen opens the database again, in a pool of its own.
func (e *SQLEnv) Reopen(t testing.TB, p Pool) Env[*sqlx.Tx] {
	t.Helper()
	dsn := e.dsn
	if p.Addr != "" {
		var err error
		if dsn, err = scratch.Rehost(e.Kind, dsn, p.Addr); err != nil {
			t.Fatal(err)
		}
	}
	db := e.Connect(t, dsn)
	if p.MaxConns > 0 {
		db.SetMaxOpenConns(p.MaxConns)
	}
	return &SQLEnv{Backend: e.Backend, DB: db, dsn: dsn}
}

// Server is the server's host:port; "" on SQLite.
func (e *SQLEnv) Server() string {
	if e.Kind == "sqlite" {
		return ""
	}
	addr, _ := scratch.Addr(e.Kind, e.dsn)
	return addr
}
