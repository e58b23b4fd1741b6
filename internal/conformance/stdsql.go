package conformance

import (
	"context"
	"database/sql"
	"testing"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/sqlstore"
)

// StdSQL is the harness of the plain database/sql store (sqlstore.New) on
// b's database: fn gets a *sql.Tx.
func StdSQL(b testdb.Backend) Harness[*sql.Tx] {
	return Harness[*sql.Tx]{Name: b.Name + "-stdsql", Kind: b.Kind, Optimistic: b.Optimistic(),
		Open: func(t testing.TB) Env[*sql.Tx] { return &StdSQLEnv{SQL: OpenSQL(t, b)} }}
}

// StdSQLEnv is a database reached through database/sql alone. It shares
// the setup of SQLEnv, whose *sqlx.DB wraps the same *sql.DB.
type StdSQLEnv struct{ SQL *SQLEnv }

var _ Env[*sql.Tx] = (*StdSQLEnv)(nil)

// DB is the database's *sql.DB.
func (e *StdSQLEnv) DB() *sql.DB { return e.SQL.DB.DB }

// NewStore returns sqlstore.New on the database.
func (e *StdSQLEnv) NewStore(t testing.TB, opts ...idempotency.Option) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.New(e.DB(), e.SQL.Driver, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Charge inserts (ref, amount) into charges through tx.
func (e *StdSQLEnv) Charge(ctx context.Context, tx *sql.Tx, ref string, amount int) error {
	insert := `INSERT INTO charges (ref, amount) VALUES (?, ?)`
	if e.SQL.Kind == "postgres" {
		insert = `INSERT INTO charges (ref, amount) VALUES ($1, $2)`
	}
	_, err := tx.ExecContext(ctx, insert, ref, amount)
	return err
}

// ExecTx runs query through tx.
func (e *StdSQLEnv) ExecTx(ctx context.Context, tx *sql.Tx, query string) error {
	_, err := tx.ExecContext(ctx, query)
	return err
}

// Exec runs query outside any transaction.
func (e *StdSQLEnv) Exec(t testing.TB, query string) { t.Helper(); e.SQL.Exec(t, query) }

// Count runs a query that returns one integer.
func (e *StdSQLEnv) Count(t testing.TB, query string) int { t.Helper(); return e.SQL.Count(t, query) }

// Begin begins a transaction of the caller's, as an ORM would.
func (e *StdSQLEnv) Begin(ctx context.Context) (*sql.Tx, error) { return e.DB().BeginTx(ctx, nil) }

// Commit commits tx.
func (e *StdSQLEnv) Commit(_ context.Context, tx *sql.Tx) error { return tx.Commit() }

// Rollback rolls tx back.
func (e *StdSQLEnv) Rollback(_ context.Context, tx *sql.Tx) error { return tx.Rollback() }

// Hold takes a connection out of the pool until release.
func (e *StdSQLEnv) Hold(ctx context.Context) (func(), error) { return e.SQL.Hold(ctx) }

// Reopen opens the database again, in a pool of its own.
func (e *StdSQLEnv) Reopen(t testing.TB, p Pool) Env[*sql.Tx] {
	t.Helper()
	return &StdSQLEnv{SQL: e.SQL.Reopen(t, p).(*SQLEnv)}
}

// Server is the server's host:port; "" on SQLite.
func (e *StdSQLEnv) Server() string { return e.SQL.Server() }
