// Package entadapter runs ent's queries inside the key's transaction of an
// idempotency store on database/sql (package sqlstore).
//
// ent's generated client runs on any dialect.Driver. Driver returns one
// whose statements run in the key's *sql.Tx, so fn builds the client it
// needs in one line:
//
//	store, err := entadapter.New(drv) // the *entsql.Driver the client was opened on
//	t, err := idempotency.Do(ctx, store.Scope(account), key, req,
//		func(ctx context.Context, tx *sql.Tx) (*ent.Transfer, error) {
//			client := ent.NewClient(ent.Driver(entadapter.Driver(drv.Dialect(), tx)))
//			return client.Transfer.Create().SetAmount(req.Amount).Save(ctx)
//		})
//
// Hooks and interceptors declared in the schema run on that client as on
// any; those registered at run time on another client (client.Use) must
// be registered on it too. The client must not begin a transaction of its
// own: its Tx method answers with an error (ent's own driver on a *sql.Tx,
// entsql.Conn{ExecQuerier: tx}, panics there instead).
//
// To join a transaction of the service's, begin it on database/sql
// (drv.DB().BeginTx), build the client on it with Driver, and pass the
// *sql.Tx to idempotency.DoTx: ent's own *ent.Tx does not show its
// *sql.Tx.
package entadapter

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/sqlstore"
)

// New returns a database/sql store on drv's *sql.DB, with the dialect of
// drv's (ent's "postgres", "mysql", "sqlite3"); opts are the root
// package's options. The key table must exist: see Up.
func New(drv *entsql.Driver, opts ...idempotency.Option) (*sqlstore.Store, error) {
	db, err := pool(drv)
	if err != nil {
		return nil, err
	}
	return sqlstore.New(db, drv.Dialect(), opts...)
}

// Up applies the key table's migrations (see migrations.Up) through drv.
func Up(ctx context.Context, drv *entsql.Driver) error {
	db, err := pool(drv)
	if err != nil {
		return err
	}
	return sqlstore.Up(ctx, db, drv.Dialect())
}

func pool(drv *entsql.Driver) (db *sql.DB, err error) {
	if drv == nil {
		return nil, errors.New("entadapter: want an open *entsql.Driver (entsql.Open or entsql.OpenDB), got nil")
	}
	defer func() {
		if recover() != nil {
			err = errors.New("entadapter: the *entsql.Driver runs on no *sql.DB: open it with entsql.Open or entsql.OpenDB")
		}
	}()
	return drv.DB(), nil
}

// Driver returns an ent driver whose statements run in tx, for a client
// of the dialect named (dialect.Postgres, dialect.MySQL,
// dialect.SQLite). Close does not end tx, and Tx refuses to begin another
// transaction: the store commits or rolls back tx.
func Driver(name string, tx *sql.Tx) dialect.Driver {
	return &txDriver{Conn: entsql.Conn{ExecQuerier: tx}, name: name}
}

type txDriver struct {
	entsql.Conn
	name string
}

var _ dialect.Driver = (*txDriver)(nil)

func (d *txDriver) Dialect() string { return d.name }

// Tx refuses: the client already runs in the key's transaction.
func (d *txDriver) Tx(context.Context) (dialect.Tx, error) {
	return nil, fmt.Errorf("entadapter: the client runs in the key's transaction already: write through it, without client.Tx")
}

// Close leaves the transaction to the store.
func (d *txDriver) Close() error { return nil }
