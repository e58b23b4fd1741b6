// Package bunadapter runs bun's queries inside the key's transaction of an
// idempotency store on database/sql (package sqlstore).
//
// In fn, which gets the key's *sql.Tx, a bun query runs in it with
// .Conn(tx), bun's own way to send a query through a connection or
// transaction it did not begin; bun's query hooks and model hooks run as
// usual:
//
//	store, err := bunadapter.New(db) // on db's *sql.DB, dialect from db's
//	t, err := idempotency.Do(ctx, store.Scope(account), key, req,
//		func(ctx context.Context, tx *sql.Tx) (Transfer, error) {
//			t := Transfer{From: req.From, To: req.To, Amount: req.Amount}
//			_, err := db.NewInsert().Model(&t).Conn(tx).Exec(ctx)
//			return t, err
//		})
//
// Inside a transaction bun already runs (db.RunInTx), DoTx runs the call in
// it, under a savepoint, and fn gets that bun.Tx.
//
// On Postgres, open bun on pgx's stdlib or lib/pq: the store sorts their
// errors (a serialization failure runs fn again); bun's own pgdriver
// reports errors the store does not know, which it then treats as any
// error of fn's.
package bunadapter

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/sqlstore"
)

// New returns a database/sql store on db's *sql.DB, with the dialect of
// db's (Postgres, MySQL or MariaDB, SQLite); opts are the root package's
// options. The key table must exist: see Up.
func New(db *bun.DB, opts ...idempotency.Option) (*sqlstore.Store, error) {
	name, err := driverName(db)
	if err != nil {
		return nil, err
	}
	return sqlstore.New(db.DB, name, opts...)
}

// Up applies the key table's migrations (see migrations.Up) through db.
func Up(ctx context.Context, db *bun.DB) error {
	name, err := driverName(db)
	if err != nil {
		return err
	}
	return sqlstore.Up(ctx, db.DB, name)
}

// driverName is the name the store's dialect is registered under for
// db's database.
func driverName(db *bun.DB) (string, error) {
	if db == nil || db.DB == nil {
		return "", errors.New("bunadapter: want an open *bun.DB (bun.NewDB), got nil")
	}
	switch n := db.Dialect().Name(); n {
	case dialect.PG:
		return "postgres", nil
	case dialect.MySQL:
		return "mysql", nil
	case dialect.SQLite:
		return "sqlite", nil
	default:
		return "", fmt.Errorf("bunadapter: no idempotency dialect for bun's %s: the store runs on Postgres, MySQL or MariaDB, and SQLite", n)
	}
}

// DoTx is idempotency.DoTx for a transaction bun runs: call it with the tx
// of db.RunInTx (or db.BeginTx). The key is claimed and saved under a
// savepoint of that transaction and commits or rolls back with it; fn gets
// tx.
func DoTx[T any](ctx context.Context, tx bun.Tx, s *sqlstore.Store, key string, params any, fn func(ctx context.Context, tx bun.Tx) (T, error)) (T, error) {
	res, err := RunTx(ctx, tx, s, key, params, fn)
	return res.Value, err
}

// RunTx is DoTx that also says whether the answer was replayed.
func RunTx[T any](ctx context.Context, tx bun.Tx, s *sqlstore.Store, key string, params any, fn func(ctx context.Context, tx bun.Tx) (T, error)) (idempotency.Result[T], error) {
	if tx.Tx == nil {
		return idempotency.Result[T]{}, errors.New("bunadapter: RunTx with a bun.Tx that holds no transaction: pass the tx of db.RunInTx or db.BeginTx")
	}
	return idempotency.RunTx(ctx, tx.Tx, s, key, params, func(ctx context.Context, _ *sql.Tx) (T, error) {
		return fn(ctx, tx)
	})
}
