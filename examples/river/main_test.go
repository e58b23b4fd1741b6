package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jmoiron/sqlx"
	_ "modernc.org/sqlite"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/internal/exampletest"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// drivers are the example's -driver values: SQLite, Postgres through
// database/sql (lib/pq and pgx's stdlib), and Postgres through the pgx store.
var drivers = []string{"sqlite", "postgres", "pgx", "pgxstore"}

// newDSN returns the -dsn of a new, empty database for driver, dropped at
// the end of the test. Postgres needs IDEMPOTENCY_POSTGRES_DSN (or Docker);
// without it the test skips, except under CI=true, where it fails.
func newDSN(t *testing.T, driver string) string {
	t.Helper()
	if driver == "sqlite" {
		return filepath.Join(t.TempDir(), "river.db")
	}
	return testdb.Backend{Name: driver, Driver: "pgx", Kind: "postgres"}.DSN(t)
}

// inspect opens the database the example runs on, through database/sql,
// for the test's own reads.
func inspect(t *testing.T, driver, dsn string) *sqlx.DB {
	t.Helper()
	if driver == "sqlite" {
		return testdb.Backend{Name: "sqlite", Driver: "sqlite"}.Connect(t, sqliteDSN(dsn))
	}
	return testdb.Backend{Name: driver, Driver: "pgx"}.Connect(t, dsn)
}

func count(t *testing.T, db *sqlx.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Get(&n, db.Rebind(query), args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// runOK runs the example's command line and returns what it printed.
func runOK(t *testing.T, args ...string) string {
	t.Helper()
	return exampletest.Output(t, nil, func(ctx context.Context, w io.Writer, _ *sqlx.DB) error {
		return run(ctx, args, w, hooks{})
	})
}

// TestExample runs the demo on its default database (a new SQLite file)
// and on every driver, and checks what it told and what it left behind.
func TestExample(t *testing.T) {
	t.Parallel()
	t.Run("default", func(t *testing.T) {
		t.Parallel()
		checkDemo(t, runOK(t))
	})
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			dsn := newDSN(t, driver)
			checkDemo(t, runOK(t, "-driver", driver, "-dsn", dsn))
			// The database agrees: a charge and a key per order (the 422
			// wrote nothing), one job per charge, two collected, the
			// declined one cancelled.
			db := inspect(t, driver, dsn)
			charges := count(t, db, `SELECT COUNT(*) FROM charges`)
			perKey := count(t, db, `SELECT COUNT(DISTINCT idempotency_key) FROM charges`)
			keys := count(t, db, `SELECT COUNT(*) FROM idempotency_keys`)
			jobs := count(t, db, `SELECT COUNT(*) FROM river_job`)
			completed := count(t, db, `SELECT COUNT(*) FROM river_job WHERE state = 'completed' AND attempt = 2`)
			cancelled := count(t, db, `SELECT COUNT(*) FROM river_job WHERE state = 'cancelled' AND attempt = 1`)
			if charges != 3 || perKey != 3 || keys != 3 || jobs != 3 || completed != 2 || cancelled != 1 {
				t.Errorf("charges=%d (keys %d), key rows=%d, jobs=%d (completed at run 2: %d, cancelled at run 1: %d); want 3 (3), 3, 3 (2, 1)",
					charges, perKey, keys, jobs, completed, cancelled)
			}
		})
	}
}

func checkDemo(t *testing.T, out string) {
	t.Helper()
	exampletest.Contains(t, out,
		"1. POST /v1/charges, key order-1, 10.00 EUR: 201, charge ch_",
		"; the same transaction inserted job ",
		"2. the client retries order-1: 201, replayed=true, same charge ch_",
		"3. key order-1 with 20.00 EUR: 422 (same key, other request), nothing written; jobs: 1",
		"4. order-2 (25.00 EUR) and order-3 (2000.00 EUR, which the provider will decline): jobs: 3",
		"(order-1), run 1: the worker died after the provider call (simulated); River runs it again",
		"(order-1), run 2: completed; the provider had seen the key and answered with its charge py_",
		"(order-2), run 2: completed; the provider had seen the key and answered with its charge py_",
		"(order-3), run 1: cancelled, not retried: provider refused charge ch_",
		"6. the provider got 5 requests with 3 keys and made 2 charges",
	)
}

// TestJobCommitsWithTheKey calls idempotency.Do with the API's fn on every
// driver: the job is inserted in fn's transaction, so it rolls back with a
// failed call and commits once with the call that succeeds.
func TestJobCommitsWithTheKey(t *testing.T) {
	t.Parallel()
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dsn := newDSN(t, driver)
			a, err := open(ctx, driver, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer a.close()
			if err := a.migrate(ctx); err != nil {
				t.Fatal(err)
			}
			db := inspect(t, driver, dsn)
			switch s := a.(type) {
			case *stack[*sqlx.Tx, *sql.Tx]:
				checkJobCommitsWithKey(ctx, t, s, db)
			case *stack[pgx.Tx, pgx.Tx]:
				checkJobCommitsWithKey(ctx, t, s, db)
			default:
				t.Fatalf("open(%s) returned a %T", driver, a)
			}
		})
	}
}

func checkJobCommitsWithKey[STx, RTx any](ctx context.Context, t *testing.T, s *stack[STx, RTx], db *sqlx.DB) {
	store := s.store.Scope("cus_t")
	req := ChargeRequest{Amount: 5_00, Currency: "EUR"}
	errDeclined := errors.New("declined after the job was inserted")
	runs := 0
	fn := func(fail bool) func(context.Context, STx) (Charge, error) {
		return func(ctx context.Context, tx STx) (Charge, error) {
			runs++
			c := Charge{ID: "ch_" + strings.Repeat("0", runs), Customer: "cus_t", Key: "order-1", Amount: req.Amount, Currency: req.Currency}
			if err := s.charge(ctx, tx, c); err != nil {
				return Charge{}, err
			}
			if fail {
				return Charge{}, errDeclined
			}
			return c, nil
		}
	}
	state := func() (charges, jobs int) {
		js, err := s.jobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return count(t, db, `SELECT COUNT(*) FROM charges`), len(js)
	}

	// fn wrote the charge and inserted the job, then failed: both rolled
	// back with the key.
	if _, err := idempotency.Do(ctx, store, "order-1", req, fn(true)); !errors.Is(err, errDeclined) {
		t.Fatalf("failing call: %v, want %v", err, errDeclined)
	}
	if charges, jobs := state(); charges != 0 || jobs != 0 {
		t.Fatalf("after the failed call: %d charges, %d jobs; want none", charges, jobs)
	}
	// The retry runs fn again and commits: one charge, one job.
	first, err := idempotency.Do(ctx, store, "order-1", req, fn(false))
	if err != nil {
		t.Fatal(err)
	}
	// Another retry replays: fn does not run, and no job is added.
	again, err := idempotency.Run(ctx, store, "order-1", req, fn(false))
	if err != nil || !again.Replayed || again.Value != first {
		t.Fatalf("replay: %+v, %v; want a replay of %+v", again, err, first)
	}
	charges, jobs := state()
	if charges != 1 || jobs != 1 || runs != 2 {
		t.Fatalf("%d charges, %d jobs, fn ran %d times; want 1, 1, 2", charges, jobs, runs)
	}
	js, err := s.jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a := args(js[0]); a.Customer != "cus_t" || a.Key != "order-1" || a.ChargeID != first.ID || js[0].State != "available" {
		t.Errorf("job %+v (%s); want the committed charge %s, available", a, js[0].State, first.ID)
	}
}

// TestBadInput: the command line names what is wrong.
func TestBadInput(t *testing.T) {
	t.Parallel()
	dsn := filepath.Join(t.TempDir(), "river.db")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"deploy"}, `unknown command "deploy"`},
		{[]string{"api"}, "api: needs -dsn"},
		{[]string{"-driver", "mysql", "-dsn", "root@tcp(127.0.0.1:3306)/test"}, "no River driver for MySQL or MariaDB"},
		{[]string{"-driver", "oracle", "-dsn", "x"}, `unknown -driver "oracle"`},
		{[]string{"-driver", "pgxstore"}, "-driver pgxstore needs a -dsn"},
		{[]string{"-driver", "pgx"}, "-driver pgx needs a -dsn"},
		{[]string{"worker", "-dsn", dsn}, "the worker needs the provider's URL (-provider)"},
		{[]string{"migrate", "-dsn", dsn, "now"}, `migrate: unexpected arguments ["now"]`},
	} {
		err := run(context.Background(), c.args, &bytes.Buffer{}, hooks{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("run %q: %v; want an error with %q", c.args, err, c.want)
		}
	}
}
