package entadapter_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/entadapter"
	"github.com/exactlyonce/idempotency/entadapter/internal/testent"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/sqlstore"
)

// entDialect is ent's name for a kind of database.
var entDialect = map[string]string{"postgres": dialect.Postgres, "mysql": dialect.MySQL, "sqlite": dialect.SQLite}

// entEnv is a database of the conformance suite reached through ent: the
// store is entadapter.New's, and the suite's business writes go through a
// generated ent client built on the key's transaction with Driver.
type entEnv struct {
	*conformance.StdSQLEnv
	drv *entsql.Driver
}

var _ conformance.Env[*sql.Tx] = (*entEnv)(nil)

func harness(b testdb.Backend) conformance.Harness[*sql.Tx] {
	return conformance.Harness[*sql.Tx]{Name: b.Name + "-ent", Kind: b.Kind,
		Open: func(t testing.TB) conformance.Env[*sql.Tx] {
			e := &conformance.StdSQLEnv{SQL: conformance.OpenSQL(t, b)}
			return &entEnv{StdSQLEnv: e, drv: entsql.OpenDB(entDialect[b.Kind], e.DB())}
		}}
}

func (e *entEnv) client(tx *sql.Tx) *testent.Client {
	return testent.NewClient(testent.Driver(entadapter.Driver(e.drv.Dialect(), tx)))
}

func (e *entEnv) NewStore(t testing.TB, opts ...idempotency.Option) *sqlstore.Store {
	t.Helper()
	s, err := entadapter.New(e.drv, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *entEnv) Charge(ctx context.Context, tx *sql.Tx, ref string, amount int) error {
	return e.client(tx).Charge.Create().SetID(ref).SetAmount(amount).Exec(ctx)
}

func (e *entEnv) Reopen(t testing.TB, p conformance.Pool) conformance.Env[*sql.Tx] {
	t.Helper()
	re := e.StdSQLEnv.Reopen(t, p).(*conformance.StdSQLEnv)
	return &entEnv{StdSQLEnv: re, drv: entsql.OpenDB(e.drv.Dialect(), re.DB())}
}

// TestConformance runs the behaviour suite through a generated ent client
// on SQLite, Postgres (lib/pq and pgx stdlib) and MySQL or MariaDB.
func TestConformance(t *testing.T) {
	for _, b := range testdb.OwnServers() {
		conformance.Run(t, harness(b))
	}
}

// TestClientInTheKeysTransaction: the client built with Driver reads its
// own uncommitted writes, cannot begin a transaction of its own (an
// error, not ent's panic), and joins a caller's transaction with DoTx.
func TestClientInTheKeysTransaction(t *testing.T) {
	t.Parallel()
	for _, b := range testdb.OwnServers() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			e := harness(b).Open(t).(*entEnv)
			store := e.NewStore(t)
			ctx := context.Background()
			v, err := idempotency.Do(ctx, store, "k", 1, func(ctx context.Context, tx *sql.Tx) (int, error) {
				c := e.client(tx)
				if _, err := c.Tx(ctx); err == nil || !strings.Contains(err.Error(), "already") {
					t.Errorf("client.Tx in fn: %v, want entadapter's refusal", err)
				}
				if err := c.Charge.Create().SetID("a").SetAmount(3).Exec(ctx); err != nil {
					return 0, err
				}
				return c.Charge.Query().Count(ctx)
			})
			if err != nil || v != 1 {
				t.Fatalf("Do: %d, %v; want the client to count its own row", v, err)
			}

			// DoTx: the service's transaction, begun on database/sql.
			errUndo := errors.New("undo")
			in := func(undo bool) (idempotency.Result[string], error) {
				tx, err := e.drv.DB().BeginTx(ctx, nil)
				if err != nil {
					return idempotency.Result[string]{}, err
				}
				defer func() { _ = tx.Rollback() }()
				res, err := idempotency.RunTx(ctx, tx, store, "j", 1, func(ctx context.Context, tx *sql.Tx) (string, error) {
					ch, err := e.client(tx).Charge.Create().SetID("b").SetAmount(4).Save(ctx)
					if err != nil {
						return "", err
					}
					return ch.ID, nil
				})
				if err != nil {
					return res, err
				}
				if undo {
					return res, errUndo
				}
				return res, tx.Commit()
			}
			if _, err := in(true); !errors.Is(err, errUndo) {
				t.Fatal(err)
			}
			if res, err := in(false); err != nil || res.Replayed || res.Value != "b" {
				t.Fatalf("after the rollback: %+v, %v; want a fresh run", res, err)
			}
			if res, err := in(false); err != nil || !res.Replayed || res.Value != "b" {
				t.Fatalf("after the commit: %+v, %v; want the replay", res, err)
			}
			if n := e.Count(t, `SELECT COUNT(*) FROM charges`); n != 2 {
				t.Fatalf("%d rows, want 2", n)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	if _, err := entadapter.New(nil); err == nil || !strings.Contains(err.Error(), "want an open *entsql.Driver") {
		t.Fatalf("New(nil): %v", err)
	}
	e := harness(testdb.OwnServers()[0]).Open(t).(*entEnv)
	tx, err := e.DB().Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	onTx := entsql.NewDriver(dialect.SQLite, entsql.Conn{ExecQuerier: tx})
	if _, err := entadapter.New(onTx); err == nil || !strings.Contains(err.Error(), "runs on no *sql.DB") {
		t.Fatalf("New on a driver over a *sql.Tx: %v", err)
	}
}
