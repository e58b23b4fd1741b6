package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/mattn/go-sqlite3" // "sqlite3" (needs cgo)
	_ "modernc.org/sqlite"          // "sqlite"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/dialects/sqlite"
)

var ctx = context.Background()

// open opens a database file with driver, busy at once when locked.
func open(t *testing.T, driver, path string) *sqlx.DB {
	t.Helper()
	dsn := map[string]string{
		"sqlite":  "file:" + path + "?_pragma=busy_timeout(0)",
		"sqlite3": "file:" + path + "?_busy_timeout=0",
	}[driver]
	db, err := sqlx.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.PingContext(ctx); err != nil {
		t.Skipf("%s cannot open a database (mattn/go-sqlite3 built without cgo?): %v", driver, err)
	}
	return db
}

// TestErrorsOfBothDrivers: the dialect reads the result codes of
// modernc.org/sqlite and mattn/go-sqlite3 alike, bare, wrapped or joined
// (as goose joins its errors): a locked database is Busy and a race worth
// another migration; a missing table is MissingTable.
func TestErrorsOfBothDrivers(t *testing.T) {
	d := sqlite.New(dialects.DefaultTable)
	for _, driver := range []string{"sqlite", "sqlite3"} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "test.db")
			holder, db := open(t, driver, path), open(t, driver, path)
			conn, err := holder.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
				t.Fatal(err)
			}
			_, busy := db.ExecContext(ctx, `CREATE TABLE t (x INTEGER)`)
			if busy == nil {
				t.Fatal("a write while another connection holds the write lock succeeded")
			}
			_, missing := db.ExecContext(ctx, `SELECT 1 FROM idempotency_keys`)
			if missing == nil {
				t.Fatal("a read of a missing table succeeded")
			}
			for _, wrap := range []func(error) error{
				func(err error) error { return err },
				func(err error) error { return fmt.Errorf("create the migration lock table: %w", err) },
				func(err error) error {
					return fmt.Errorf("failed to initialize: %w", errors.Join(err, errors.New("close the connection")))
				},
			} {
				if err := wrap(busy); d.Classify(err) != dialects.Busy || !d.MigrationRace(err) {
					t.Errorf("%v (%T): Classify = %v, MigrationRace = %v; want Busy, true", err, busy, d.Classify(err), d.MigrationRace(err))
				}
				if err := wrap(missing); !d.MissingTable(err) || d.MigrationRace(err) || d.Classify(err) != dialects.Definite {
					t.Errorf("%v (%T): MissingTable = %v, MigrationRace = %v, Classify = %v; want true, false, Definite",
						err, missing, d.MissingTable(err), d.MigrationRace(err), d.Classify(err))
				}
			}
		})
	}
	if err := errors.New("database is locked"); d.MigrationRace(err) || d.Classify(err) != dialects.Unknown {
		t.Errorf("an error with no result code: MigrationRace = %v, Classify = %v", d.MigrationRace(err), d.Classify(err))
	}
}

// TestNowMillis: SQLite's clock, as the key table stores it, is the time
// in milliseconds since 1970, and AgeSQL reads a row's age in seconds by it.
func TestNowMillis(t *testing.T) {
	db := open(t, "sqlite", filepath.Join(t.TempDir(), "test.db"))
	var now int64
	if err := db.GetContext(ctx, &now, `SELECT `+sqlite.NowMillis); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(time.UnixMilli(now)).Abs(); d > 5*time.Second {
		t.Errorf("NowMillis is %v away from the time", d)
	}
	age, expired := sqlite.New(dialects.DefaultTable).AgeSQL()
	var (
		secs float64
		gone bool
	)
	q := `SELECT ` + age + `, ` + expired + ` FROM (SELECT ` + sqlite.NowMillis + ` - 90000 AS created_at, ` + sqlite.NowMillis + ` - 1 AS expires_at)`
	if err := db.QueryRowContext(ctx, q).Scan(&secs, &gone); err != nil {
		t.Fatal(err)
	}
	if secs < 89.9 || secs > 95 || !gone {
		t.Errorf("a row created 90 s ago and expired 1 ms ago: age %v s, expired %v", secs, gone)
	}
}
