// Package gormadapter runs GORM's writes inside the key's transaction of
// an idempotency store on database/sql (package sqlstore): fn gets a
// *gorm.DB bound to that transaction, with GORM's callbacks, hooks and
// plugins running as in any GORM transaction, and prepared statements
// when the *gorm.DB prepares them (PrepareStmt).
//
//	store, err := gormadapter.New(gdb) // on gdb's *sql.DB, dialect from gdb's
//	t, err := gormadapter.Do(ctx, store.Scope(account), gdb, key, req,
//		func(ctx context.Context, tx *gorm.DB) (Transfer, error) {
//			t := Transfer{From: req.From, To: req.To, Amount: req.Amount}
//			return t, tx.Create(&t).Error
//		})
//
// Inside a transaction GORM already runs (gdb.Transaction), DoTx runs the
// call in it, under a savepoint. Elsewhere (an HTTP handler given the
// request's *sql.Tx) Bind turns a *sql.Tx into a *gorm.DB.
//
// Bind never touches gdb: the *gorm.DB it returns is a new session whose
// statement is its own. (A bare gdb.Session(&gorm.Session{}) shares
// gdb's statement, and setting its ConnPool would send every later query
// of the application's handle into the transaction.)
package gormadapter

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"gorm.io/gorm"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/sqlstore"
)

// New returns a database/sql store on gdb's connection pool. The dialect
// is the one registered for gdb's dialector name ("postgres", "mysql",
// "sqlite"); opts are the root package's options. The key table must
// exist: see Up.
func New(gdb *gorm.DB, opts ...idempotency.Option) (*sqlstore.Store, error) {
	db, name, err := pool(gdb)
	if err != nil {
		return nil, err
	}
	return sqlstore.New(db, name, opts...)
}

// Up applies the key table's migrations (see migrations.Up) through gdb's
// connection pool.
func Up(ctx context.Context, gdb *gorm.DB) error {
	db, name, err := pool(gdb)
	if err != nil {
		return err
	}
	return sqlstore.Up(ctx, db, name)
}

// pool returns gdb's *sql.DB and the name its dialect is registered under.
func pool(gdb *gorm.DB) (*sql.DB, string, error) {
	if gdb == nil || gdb.Dialector == nil {
		return nil, "", errors.New("gormadapter: want an open *gorm.DB (gorm.Open), got nil")
	}
	db, err := gdb.DB()
	if err != nil {
		return nil, "", fmt.Errorf("gormadapter: gdb has no *sql.DB underneath (%w): open it with a database/sql dialector", err)
	}
	return db, gdb.Dialector.Name(), nil
}

// Bind returns a *gorm.DB whose statements run in tx, under ctx: a new
// session of gdb (its configuration, callbacks and plugins), as
// gdb.Begin() would return for a transaction it began. With PrepareStmt
// on, its statements are prepared as gdb's are. gdb itself is left as it
// was. Do not call Commit or Rollback on it: the store ends tx.
func Bind(ctx context.Context, gdb *gorm.DB, tx *sql.Tx) *gorm.DB {
	if ctx == nil {
		ctx = context.Background()
	}
	// A Context in the session makes GORM clone the statement (without
	// one, the session would share gdb's); NewDB starts every chain on
	// the bound session afresh, as on gdb.Begin() of a new handle.
	s := gdb.Session(&gorm.Session{Context: ctx, NewDB: true})
	if p, ok := s.Statement.ConnPool.(*gorm.PreparedStmtDB); ok {
		s.Statement.ConnPool = &gorm.PreparedStmtTX{Tx: tx, PreparedStmtDB: p}
	} else {
		s.Statement.ConnPool = tx
	}
	return s
}

// Do is idempotency.Do with fn's writes through GORM: fn gets gdb bound to
// the key's transaction (Bind).
func Do[T any](ctx context.Context, s *sqlstore.Store, gdb *gorm.DB, key string, params any, fn func(ctx context.Context, tx *gorm.DB) (T, error)) (T, error) {
	res, err := Run(ctx, s, gdb, key, params, fn)
	return res.Value, err
}

// Run is Do that also says whether the answer was replayed, as
// idempotency.Run does.
func Run[T any](ctx context.Context, s *sqlstore.Store, gdb *gorm.DB, key string, params any, fn func(ctx context.Context, tx *gorm.DB) (T, error)) (idempotency.Result[T], error) {
	if gdb == nil {
		return idempotency.Result[T]{}, errors.New("gormadapter: Run with a nil *gorm.DB")
	}
	return idempotency.Run(ctx, s, key, params, func(ctx context.Context, tx *sql.Tx) (T, error) {
		return fn(ctx, Bind(ctx, gdb, tx))
	})
}

// DoTx is idempotency.DoTx for a transaction GORM runs: call it with the
// tx of gdb.Transaction(func(tx *gorm.DB) error { ... }) (or of
// gdb.Begin()). The key is claimed and saved under a savepoint of that
// transaction and commits or rolls back with it; fn gets tx under ctx.
func DoTx[T any](ctx context.Context, tx *gorm.DB, s *sqlstore.Store, key string, params any, fn func(ctx context.Context, tx *gorm.DB) (T, error)) (T, error) {
	res, err := RunTx(ctx, tx, s, key, params, fn)
	return res.Value, err
}

// RunTx is DoTx that also says whether the answer was replayed.
func RunTx[T any](ctx context.Context, tx *gorm.DB, s *sqlstore.Store, key string, params any, fn func(ctx context.Context, tx *gorm.DB) (T, error)) (idempotency.Result[T], error) {
	st, err := SQLTx(tx)
	if err != nil {
		return idempotency.Result[T]{}, err
	}
	return idempotency.RunTx(ctx, st, s, key, params, func(ctx context.Context, _ *sql.Tx) (T, error) {
		return fn(ctx, tx.WithContext(ctx))
	})
}

// SQLTx returns the *sql.Tx of a *gorm.DB in a transaction (the tx of
// gdb.Transaction, or gdb.Begin()), prepared statements or not. It is an
// error for a *gorm.DB in no transaction.
func SQLTx(tx *gorm.DB) (*sql.Tx, error) {
	if tx == nil || tx.Statement == nil {
		return nil, errors.New("gormadapter: want the *gorm.DB of a transaction (gdb.Transaction's tx, or gdb.Begin()), got nil")
	}
	switch c := tx.Statement.ConnPool.(type) {
	case *sql.Tx:
		return c, nil
	case *gorm.PreparedStmtTX:
		if st, ok := c.Tx.(*sql.Tx); ok {
			return st, nil
		}
	}
	return nil, fmt.Errorf("gormadapter: the *gorm.DB is in no database/sql transaction (its connection pool is a %T): call DoTx with the tx of gdb.Transaction, or of gdb.Begin()", tx.Statement.ConnPool)
}
