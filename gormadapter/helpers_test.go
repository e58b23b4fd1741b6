package gormadapter_test

import (
	"context"
	"database/sql"
	"testing"

	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/gormadapter"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/sqlstore"
)

// openGORM opens GORM on db, a database of b's kind, as an application
// would with its dialector (gorm.io/driver/...) on a pool it opened.
func openGORM(t testing.TB, kind string, db *sql.DB, prepare bool) *gorm.DB {
	t.Helper()
	var d gorm.Dialector
	switch kind {
	case "postgres":
		d = postgres.New(postgres.Config{Conn: db})
	case "mysql":
		d = mysql.New(mysql.Config{Conn: db})
	case "sqlite":
		d = sqlite.Dialector{Conn: db}
	default:
		t.Fatalf("no GORM dialector for %q", kind)
	}
	gdb, err := gorm.Open(d, &gorm.Config{PrepareStmt: prepare, Logger: logger.Discard})
	if err != nil {
		t.Fatalf("gorm.Open on %s: %v", kind, err)
	}
	return gdb
}

// charge is the row of the suite's charges table, as a GORM model.
type charge struct {
	Ref    string
	Amount int
}

func (charge) TableName() string { return "charges" }

// gormEnv is a database of the conformance suite reached through GORM:
// the store is gormadapter.New's, and the suite's business writes go
// through a *gorm.DB bound to the key's transaction (with prepared
// statements), so the whole suite runs through the ORM.
type gormEnv struct {
	*conformance.StdSQLEnv
	gdb *gorm.DB
}

var _ conformance.Env[*sql.Tx] = (*gormEnv)(nil)

func harness(b testdb.Backend) conformance.Harness[*sql.Tx] {
	return conformance.Harness[*sql.Tx]{Name: b.Name + "-gorm", Kind: b.Kind, Optimistic: b.Optimistic(),
		Open: func(t testing.TB) conformance.Env[*sql.Tx] {
			e := &conformance.StdSQLEnv{SQL: conformance.OpenSQL(t, b)}
			return &gormEnv{StdSQLEnv: e, gdb: openGORM(t, b.Kind, e.DB(), true)}
		}}
}

func (e *gormEnv) NewStore(t testing.TB, opts ...idempotency.Option) *sqlstore.Store {
	t.Helper()
	s, err := gormadapter.New(e.gdb, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *gormEnv) Charge(ctx context.Context, tx *sql.Tx, ref string, amount int) error {
	return gormadapter.Bind(ctx, e.gdb, tx).Create(&charge{Ref: ref, Amount: amount}).Error
}

func (e *gormEnv) ExecTx(ctx context.Context, tx *sql.Tx, query string) error {
	return gormadapter.Bind(ctx, e.gdb, tx).Exec(query).Error
}

// Begin begins the caller's transaction through GORM, as a service layer
// on GORM would (gdb.Begin), for DoTx.
func (e *gormEnv) Begin(ctx context.Context) (*sql.Tx, error) {
	g := e.gdb.WithContext(ctx).Begin()
	if g.Error != nil {
		return nil, g.Error
	}
	return gormadapter.SQLTx(g)
}

func (e *gormEnv) Reopen(t testing.TB, p conformance.Pool) conformance.Env[*sql.Tx] {
	t.Helper()
	re := e.StdSQLEnv.Reopen(t, p).(*conformance.StdSQLEnv)
	return &gormEnv{StdSQLEnv: re, gdb: openGORM(t, e.SQL.Kind, re.DB(), true)}
}
