package pgxstore

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
)

// harness is the pgx store as the conformance suite and benchmark reach it.
var harness = conformance.Harness[pgx.Tx]{Name: "pgx-native", Kind: "postgres", Open: openEnv}

// bouncedHarness is the pgx store through PgBouncer in transaction pooling,
// with default_query_exec_mode=exec (testdb.PgBouncer), migrated directly.
var bouncedHarness = conformance.Harness[pgx.Tx]{Name: "pgx-native-pgbouncer", Kind: "postgres", Open: func(t testing.TB) conformance.Env[pgx.Tx] {
	return openEnvOn(t, bounced)
}}

// bounced is the pgx backend of testdb.PgBouncer.
var bounced = testdb.PgBouncer()[0]

// TestConformance runs the behaviour suite every driver passes on the pgx
// store, directly and through PgBouncer.
func TestConformance(t *testing.T) {
	conformance.Run(t, harness)
	conformance.Run(t, bouncedHarness)
}

// env is a database reached through a pgxpool.Pool.
type env struct {
	pool *pgxpool.Pool
	dsn  string
	edit func(*pgxpool.Config) // the pool's settings beside the DSN's
}

var _ conformance.Env[pgx.Tx] = (*env)(nil)

// openEnv returns a fresh schema, migrated through Up, with the suite's
// charges table.
func openEnv(t testing.TB) conformance.Env[pgx.Tx] { return openEnvOn(t, backend) }

// openEnvOn is openEnv on backend b; where b reaches Postgres through
// PgBouncer, Up runs on a pool of its own that reaches Postgres directly.
func openEnvOn(t testing.TB, b testdb.Backend) conformance.Env[pgx.Tx] {
	t.Helper()
	dsn := b.DSN(t)
	var edit func(*pgxpool.Config)
	if b.Server == "pgbouncer" {
		edit = func(c *pgxpool.Config) { scratch.NoCancelRequests(c.ConnConfig) }
	}
	e := &env{pool: openPool(t, dsn, edit), dsn: dsn, edit: edit}
	up := e.pool
	if direct := b.Direct(t, dsn); direct != dsn {
		up = openPool(t, direct, nil)
	}
	if err := Up(context.Background(), up); err != nil {
		t.Fatalf("Up: %v", err)
	}
	e.Exec(t, testdb.Charges)
	return e
}

func (e *env) NewStore(t testing.TB, opts ...idempotency.Option) *idempotency.TxStore[pgx.Tx] {
	t.Helper()
	s, err := New(e.pool, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *env) Charge(ctx context.Context, tx pgx.Tx, ref string, amount int) error {
	_, err := tx.Exec(ctx, `INSERT INTO charges (ref, amount) VALUES ($1, $2)`, ref, amount)
	return err
}

func (e *env) ExecTx(ctx context.Context, tx pgx.Tx, query string) error {
	_, err := tx.Exec(ctx, query)
	return err
}

func (e *env) Exec(t testing.TB, query string) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func (e *env) Count(t testing.TB, query string) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func (e *env) Begin(ctx context.Context) (pgx.Tx, error)     { return e.pool.Begin(ctx) }
func (e *env) Commit(ctx context.Context, tx pgx.Tx) error   { return tx.Commit(ctx) }
func (e *env) Rollback(ctx context.Context, tx pgx.Tx) error { return tx.Rollback(ctx) }

func (e *env) Server() string {
	addr, _ := scratch.Addr("postgres", e.dsn)
	return addr
}

func (e *env) Hold(ctx context.Context) (release func(), err error) {
	c, err := e.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return c.Release, nil
}

func (e *env) Reopen(t testing.TB, p conformance.Pool) conformance.Env[pgx.Tx] {
	t.Helper()
	dsn := e.dsn
	if p.Addr != "" {
		var err error
		if dsn, err = scratch.Rehost("postgres", dsn, p.Addr); err != nil {
			t.Fatal(err)
		}
	}
	pool := openPool(t, dsn, func(c *pgxpool.Config) {
		if e.edit != nil {
			e.edit(c)
		}
		if p.MaxConns > 0 {
			c.MaxConns = int32(p.MaxConns)
		}
	})
	return &env{pool: pool, dsn: dsn, edit: e.edit}
}
