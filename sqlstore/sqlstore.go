// Package sqlstore is the idempotency store on plain database/sql: fn gets
// a *sql.Tx and the store takes a *sql.DB, so code that has no sqlx (an
// ORM's code: GORM, bun, ent) can run in the key's transaction, and DoTx
// joins a *sql.Tx that such code began.
//
//	store, err := sqlstore.New(db, "pgx") // the name db was opened with
//	v, err := idempotency.Do(ctx, store, key, req,
//		func(ctx context.Context, tx *sql.Tx) (Charge, error) {
//			return insertCharge(ctx, tx, req) // every write through tx
//		})
//
// It is the database/sql store of the root package (idempotency.New) with
// another transaction type: the same dialects, schema, migrations and
// behaviour, flows included, so a key written by either store replays on
// the other.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/migrations"
)

// Store is the database/sql store: idempotency.Do, Run, DoTx, RunTx, InTx
// and flows accept it, with fn func(ctx context.Context, tx *sql.Tx) (T,
// error). Scope, Prune and RunPruner work as on the sqlx store.
type Store = idempotency.TxStore[*sql.Tx]

// New returns a Store on db. driverName is the database/sql driver name db
// was opened with ("postgres", "pgx", "mysql", "sqlite", "sqlite3"; see
// dialects.Drivers), which picks the dialect, as sqlx.NewDb takes it: a
// *sql.DB does not know its name. It takes the root package's options,
// except WithDialect: register a dialect for another driver name with
// dialects.Register. The key table must exist: see Up.
//
// The store borrows db's connections one call at a time and never closes
// db.
func New(db *sql.DB, driverName string, opts ...idempotency.Option) (*Store, error) {
	if db == nil {
		return nil, errors.New("sqlstore: New(nil, ...): want an open *sql.DB")
	}
	return idempotency.NewTxStore(func(cfg dialects.Config) (dialects.Driver[*sql.Tx], error) {
		d, err := dialects.Open(driverName, cfg.Table)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: %w", err)
		}
		x := sqlx.NewDb(db, driverName)
		return wrap(dialects.SQL(x, d, cfg), x), nil
	}, opts...)
}

// Up applies the key table's migrations to db (see migrations.Up): the
// same files, version table and lock, so a database migrated through
// either package is migrated for both.
func Up(ctx context.Context, db *sql.DB, driverName string) error {
	if db == nil {
		return errors.New("sqlstore: Up(ctx, nil, ...): want an open *sql.DB")
	}
	if err := migrations.Up(ctx, sqlx.NewDb(db, driverName)); err != nil {
		return fmt.Errorf("sqlstore: %w", err)
	}
	return nil
}
