package bunadapter_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/mysqldialect"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"github.com/uptrace/bun/schema"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/bunadapter"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/sqlstore"
)

func openBun(t testing.TB, kind string, db *sql.DB) *bun.DB {
	t.Helper()
	var d schema.Dialect
	switch kind {
	case "postgres":
		d = pgdialect.New()
	case "mysql":
		d = mysqldialect.New()
	case "sqlite":
		d = sqlitedialect.New()
	default:
		t.Fatalf("no bun dialect for %q", kind)
	}
	return bun.NewDB(db, d)
}

type charge struct {
	bun.BaseModel `bun:"table:charges"`
	Ref           string `bun:"ref"`
	Amount        int    `bun:"amount"`
}

// bunEnv is a database of the conformance suite reached through bun: the
// store is bunadapter.New's and the suite's business writes are bun
// inserts sent with .Conn(tx), the documented one-liner.
type bunEnv struct {
	*conformance.StdSQLEnv
	db *bun.DB
}

var _ conformance.Env[*sql.Tx] = (*bunEnv)(nil)

func harness(b testdb.Backend) conformance.Harness[*sql.Tx] {
	return conformance.Harness[*sql.Tx]{Name: b.Name + "-bun", Kind: b.Kind,
		Open: func(t testing.TB) conformance.Env[*sql.Tx] {
			e := &conformance.StdSQLEnv{SQL: conformance.OpenSQL(t, b)}
			return &bunEnv{StdSQLEnv: e, db: openBun(t, b.Kind, e.DB())}
		}}
}

func (e *bunEnv) NewStore(t testing.TB, opts ...idempotency.Option) *sqlstore.Store {
	t.Helper()
	s, err := bunadapter.New(e.db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *bunEnv) Charge(ctx context.Context, tx *sql.Tx, ref string, amount int) error {
	_, err := e.db.NewInsert().Model(&charge{Ref: ref, Amount: amount}).Conn(tx).Exec(ctx)
	return err
}

func (e *bunEnv) ExecTx(ctx context.Context, tx *sql.Tx, query string) error {
	_, err := e.db.NewRaw(query).Conn(tx).Exec(ctx)
	return err
}

// Begin begins the caller's transaction through bun, for DoTx.
func (e *bunEnv) Begin(ctx context.Context) (*sql.Tx, error) {
	tx, err := e.db.BeginTx(ctx, nil)
	return tx.Tx, err
}

func (e *bunEnv) Reopen(t testing.TB, p conformance.Pool) conformance.Env[*sql.Tx] {
	t.Helper()
	re := e.StdSQLEnv.Reopen(t, p).(*conformance.StdSQLEnv)
	return &bunEnv{StdSQLEnv: re, db: openBun(t, e.SQL.Kind, re.DB())}
}

// TestConformance runs the behaviour suite through bun on SQLite,
// Postgres (lib/pq and pgx stdlib) and MySQL or MariaDB.
func TestConformance(t *testing.T) {
	for _, b := range testdb.OwnServers() {
		conformance.Run(t, harness(b))
	}
}

// hook counts the queries bun runs, as a plugin (tracing, logging) would.
type hook struct{ inserts atomic.Int64 }

func (h *hook) BeforeQuery(ctx context.Context, e *bun.QueryEvent) context.Context {
	if e.Operation() == "INSERT" {
		h.inserts.Add(1)
	}
	return ctx
}

func (h *hook) AfterQuery(context.Context, *bun.QueryEvent) {}

var errUndo = errors.New("the service layer undoes its transaction")

// TestDoTxInRunInTx: DoTx joins db.RunInTx's transaction: its rollback
// takes the key and fn's row with it, its commit lets a retry replay;
// bun's query hooks see fn's insert each time it runs.
func TestDoTxInRunInTx(t *testing.T) {
	t.Parallel()
	for _, b := range testdb.OwnServers() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			e := harness(b).Open(t).(*bunEnv)
			h := &hook{}
			e.db = e.db.WithQueryHook(h)
			store := e.NewStore(t)
			ctx := context.Background()
			in := func(undo bool) (idempotency.Result[int], error) {
				var res idempotency.Result[int]
				err := e.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
					var err error
					res, err = bunadapter.RunTx(ctx, tx, store, "k", 1, func(ctx context.Context, tx bun.Tx) (int, error) {
						_, err := tx.NewInsert().Model(&charge{Ref: "t", Amount: 7}).Exec(ctx)
						return 7, err
					})
					if err == nil && undo {
						err = errUndo
					}
					return err
				})
				return res, err
			}
			if _, err := in(true); !errors.Is(err, errUndo) {
				t.Fatalf("rolled back: %v", err)
			}
			if res, err := in(false); err != nil || res.Replayed {
				t.Fatalf("second try: %+v, %v; want a fresh run", res, err)
			}
			if res, err := in(false); err != nil || !res.Replayed || res.Value != 7 {
				t.Fatalf("third try: %+v, %v; want the replay", res, err)
			}
			if n := e.Count(t, `SELECT COUNT(*) FROM charges`); n != 1 || h.inserts.Load() != 2 {
				t.Fatalf("%d rows, the hook saw %d inserts; want 1 row and 2 inserts (the rolled-back one too)", n, h.inserts.Load())
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	if _, err := bunadapter.New(nil); err == nil || !strings.Contains(err.Error(), "want an open *bun.DB") {
		t.Fatalf("New(nil): %v", err)
	}
	e := harness(testdb.OwnServers()[0]).Open(t).(*bunEnv)
	store := e.NewStore(t)
	if _, err := bunadapter.DoTx(context.Background(), bun.Tx{}, store, "k", 1, func(context.Context, bun.Tx) (int, error) {
		t.Error("fn ran without a transaction")
		return 0, nil
	}); err == nil || !strings.Contains(err.Error(), "holds no transaction") {
		t.Fatalf("DoTx with an empty bun.Tx: %v", err)
	}
}
