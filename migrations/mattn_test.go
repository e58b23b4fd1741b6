package migrations_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	_ "github.com/mattn/go-sqlite3" // registers "sqlite3" (needs cgo)

	"github.com/exactlyonce/idempotency/migrations"
)

// TestUpWaitsOutBusyMattn: Up on mattn/go-sqlite3 ("sqlite3") with no busy
// timeout meets a database that another connection has locked. It waits,
// as it does on modernc.org/sqlite, and migrates once the lock is free:
// mattn's SQLITE_BUSY is its own error type, not modernc's.
//
//   - "migration lock": goose's version table exists, a writer holds the
//     database, and Up's migration lock (a row in SQLite) is busy.
//   - "exclusive": under an EXCLUSIVE lock on a new database even opening a
//     connection is busy, and Up tries again.
func TestUpWaitsOutBusyMattn(t *testing.T) {
	for _, tc := range []struct {
		name, begin string
		versioned   bool // goose's version table exists
	}{
		{"migration lock", "BEGIN IMMEDIATE", true},
		{"exclusive", "BEGIN EXCLUSIVE", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "mattn.db")
			holder, err := sqlx.Open("sqlite3", "file:"+path)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Close()
			conn, err := holder.Conn(ctx)
			if err != nil {
				t.Skipf("mattn/go-sqlite3 cannot open a database (built without cgo?): %v", err)
			}
			defer conn.Close()
			if tc.versioned {
				p, err := migrations.Provider(holder)
				if err != nil {
					t.Fatal(err)
				}
				if v, err := p.GetDBVersion(ctx); err != nil || v != 0 {
					t.Fatalf("GetDBVersion = %d, %v; want 0 (a version table and nothing applied)", v, err)
				}
			}
			if _, err := conn.ExecContext(ctx, tc.begin); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.ExecContext(ctx, `CREATE TABLE held (x INTEGER)`); err != nil {
				t.Fatal(err)
			}

			db, err := sqlx.Open("sqlite3", "file:"+path+"?_busy_timeout=0")
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			done := make(chan error, 1)
			go func() { done <- migrations.Up(ctx, db) }()
			select {
			case err := <-done:
				t.Fatalf("Up returned while the database was locked: %v", err)
			case <-time.After(200 * time.Millisecond):
			}
			if _, err := conn.ExecContext(ctx, `COMMIT`); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("Up after the lock was freed: %v", err)
			}
			var n int
			if err := db.Get(&n, `SELECT COUNT(*) FROM idempotency_keys`); err != nil {
				t.Errorf("the key table is missing: %v", err)
			}
		})
	}
}
