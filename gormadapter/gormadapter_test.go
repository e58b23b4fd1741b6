package gormadapter_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"gorm.io/gorm"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/gormadapter"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// open returns GORM on a fresh database of b's with the charges table.
func open(t *testing.T, b testdb.Backend, prepare bool) *gorm.DB {
	t.Helper()
	e := conformance.OpenSQL(t, b)
	return openGORM(t, b.Kind, e.DB.DB, prepare)
}

// each runs f on every backend, with GORM's prepared statements off and on.
func each(t *testing.T, f func(t *testing.T, b testdb.Backend, prepare bool)) {
	t.Helper()
	for _, b := range testdb.OwnServers() {
		for _, prepare := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/PrepareStmt=%v", b.Name, prepare), func(t *testing.T) {
				t.Parallel()
				f(t, b, prepare)
			})
		}
	}
}

func count(t *testing.T, gdb *gorm.DB, ref string) int64 {
	t.Helper()
	var n int64
	if err := gdb.Model(&charge{}).Where("ref = ?", ref).Count(&n).Error; err != nil {
		t.Fatalf("count %s: %v", ref, err)
	}
	return n
}

// naiveBind is the binding a user finds first, and the one this package
// exists to replace: a Session without a Context shares gdb's statement.
func naiveBind(_ context.Context, gdb *gorm.DB, tx *sql.Tx) *gorm.DB {
	g := gdb.Session(&gorm.Session{})
	g.Statement.ConnPool = tx
	return g
}

// TestBindLeavesTheGlobalHandleAlone: while fn writes through the bound
// *gorm.DB, the application's own handle still reads outside the key's
// transaction (it cannot see fn's uncommitted row), and afterwards it
// still has its pool. The naive binding fails both checks, which shows the
// test can tell.
func TestBindLeavesTheGlobalHandleAlone(t *testing.T) {
	t.Parallel()
	binders := []struct {
		name  string
		bind  func(context.Context, *gorm.DB, *sql.Tx) *gorm.DB
		leaks bool
	}{
		{"Bind", gormadapter.Bind, false},
		{"naive", naiveBind, true},
	}
	each(t, func(t *testing.T, b testdb.Backend, prepare bool) {
		for _, bd := range binders {
			t.Run(bd.name, func(t *testing.T) {
				gdb := open(t, b, prepare)
				store, err := gormadapter.New(gdb)
				if err != nil {
					t.Fatal(err)
				}
				pool := gdb.Statement.ConnPool
				var seen int64
				_, err = idempotency.Do(context.Background(), store, "k", 1, func(ctx context.Context, tx *sql.Tx) (int, error) {
					if err := bd.bind(ctx, gdb, tx).Create(&charge{Ref: "r", Amount: 1}).Error; err != nil {
						return 0, err
					}
					seen = count(t, gdb, "r") // the global handle, mid-transaction
					return 1, nil
				})
				leaked := seen != 0 || gdb.Statement.ConnPool != pool
				if err != nil && !leaked {
					t.Fatal(err)
				}
				if leaked != bd.leaks {
					t.Fatalf("the global handle saw %d uncommitted rows and has pool %T (was %T): leaked %v, want %v",
						seen, gdb.Statement.ConnPool, pool, leaked, bd.leaks)
				}
				if !bd.leaks {
					if n := count(t, gdb, "r"); n != 1 {
						t.Fatalf("after Do the global handle counts %d rows, want 1", n)
					}
				}
			})
		}
	})
}

// hooked is a charge whose BeforeCreate hook marks the row, so the test
// can see that GORM's hooks ran inside the key's transaction.
type hooked struct {
	Ref    string
	Amount int
}

func (hooked) TableName() string { return "charges" }

func (h *hooked) BeforeCreate(*gorm.DB) error {
	h.Ref = "hooked-" + h.Ref
	return nil
}

// TestCallbacksAndHooksRun: a registered callback (a plugin's way in) and
// a model's hook run once, inside the key's transaction; a replay runs
// neither.
func TestCallbacksAndHooksRun(t *testing.T) {
	t.Parallel()
	each(t, func(t *testing.T, b testdb.Backend, prepare bool) {
		gdb := open(t, b, prepare)
		var calls, inTx atomic.Int64
		err := gdb.Callback().Create().Before("gorm:create").Register("test:count", func(db *gorm.DB) {
			calls.Add(1)
			switch db.Statement.ConnPool.(type) {
			case *sql.Tx, *gorm.PreparedStmtTX:
				inTx.Add(1)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		store, err := gormadapter.New(gdb)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			res, err := gormadapter.Run(context.Background(), store, gdb, "k", 1, func(ctx context.Context, tx *gorm.DB) (string, error) {
				h := hooked{Ref: "r", Amount: 1}
				return h.Ref, tx.Create(&h).Error
			})
			if err != nil || res.Value != "hooked-r" {
				t.Fatalf("Run: %+v, %v; want the hook's ref", res, err)
			}
		}
		if calls.Load() != 1 || inTx.Load() != 1 {
			t.Fatalf("the callback ran %d times, %d of them in a transaction; want once, in it", calls.Load(), inTx.Load())
		}
		if n := count(t, gdb, "hooked-r"); n != 1 {
			t.Fatalf("%d rows from the hooked create, want 1", n)
		}
	})
}

// TestPreparedStatementsInTheKeysTransaction: with PrepareStmt, fn's
// statements are GORM's prepared ones, run in the key's transaction.
func TestPreparedStatementsInTheKeysTransaction(t *testing.T) {
	t.Parallel()
	for _, b := range testdb.OwnServers() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			gdb := open(t, b, true)
			store, err := gormadapter.New(gdb)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := gormadapter.Do(context.Background(), store, gdb, "k", 1, func(ctx context.Context, tx *gorm.DB) (int, error) {
				if _, ok := tx.Statement.ConnPool.(*gorm.PreparedStmtTX); !ok {
					t.Errorf("fn's *gorm.DB runs on a %T, want *gorm.PreparedStmtTX", tx.Statement.ConnPool)
				}
				return 1, tx.Create(&charge{Ref: "p", Amount: 1}).Error
			}); err != nil {
				t.Fatal(err)
			}
			keys := gdb.ConnPool.(*gorm.PreparedStmtDB).Stmts.Keys()
			if !slices.ContainsFunc(keys, func(k string) bool { return strings.HasPrefix(k, "INSERT INTO") }) {
				t.Fatalf("GORM prepared %q; want the INSERT among them", keys)
			}
			if n := count(t, gdb, "p"); n != 1 {
				t.Fatalf("%d rows, want 1", n)
			}
		})
	}
}

var errUndo = errors.New("the service layer undoes its transaction")

// TestDoTxInsideGORMTransaction: DoTx joins the transaction of
// gdb.Transaction: when it rolls back, so do the key and fn's row (a retry
// runs fn again); when it commits, a retry in another transaction replays.
func TestDoTxInsideGORMTransaction(t *testing.T) {
	t.Parallel()
	each(t, func(t *testing.T, b testdb.Backend, prepare bool) {
		gdb := open(t, b, prepare)
		store, err := gormadapter.New(gdb)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		var runs atomic.Int64
		fn := func(ctx context.Context, tx *gorm.DB) (int, error) {
			runs.Add(1)
			return 7, tx.Create(&charge{Ref: "t", Amount: 7}).Error
		}
		in := func(undo bool) (idempotency.Result[int], error) {
			var res idempotency.Result[int]
			err := gdb.Transaction(func(tx *gorm.DB) error {
				var err error
				if res, err = gormadapter.RunTx(ctx, tx, store, "k", 1, fn); err != nil {
					return err
				}
				if undo {
					return errUndo
				}
				return nil
			})
			return res, err
		}
		if _, err := in(true); !errors.Is(err, errUndo) {
			t.Fatalf("rolled-back transaction: %v", err)
		}
		if n := count(t, gdb, "t"); n != 0 {
			t.Fatalf("%d rows after the rollback, want 0", n)
		}
		if res, err := in(false); err != nil || res.Replayed || res.Value != 7 {
			t.Fatalf("second try: %+v, %v; want a fresh 7 (the first rolled back)", res, err)
		}
		if res, err := in(false); err != nil || !res.Replayed || res.Value != 7 {
			t.Fatalf("third try: %+v, %v; want the replay", res, err)
		}
		if n, r := count(t, gdb, "t"), runs.Load(); n != 1 || r != 2 {
			t.Fatalf("%d rows, fn ran %d times; want 1 row, 2 runs", n, r)
		}
	})
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	if _, err := gormadapter.New(nil); err == nil || !strings.Contains(err.Error(), "want an open *gorm.DB") {
		t.Fatalf("New(nil): %v", err)
	}
	gdb := open(t, testdb.OwnServers()[0], false)
	store, err := gormadapter.New(gdb)
	if err != nil {
		t.Fatal(err)
	}
	_, err = gormadapter.DoTx(context.Background(), gdb, store, "k", 1, func(context.Context, *gorm.DB) (int, error) {
		t.Error("fn ran without a transaction")
		return 0, nil
	})
	if err == nil || !strings.Contains(err.Error(), "in no database/sql transaction") {
		t.Fatalf("DoTx on a *gorm.DB outside a transaction: %v", err)
	}
	if _, err := gormadapter.Do(context.Background(), store, nil, "k", 1, func(context.Context, *gorm.DB) (int, error) { return 0, nil }); err == nil {
		t.Fatal("Do with a nil *gorm.DB: no error")
	}
}
