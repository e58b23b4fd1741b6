package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/exactlyonce/idempotency/dialects"
)

// GooseDialect returns "sqlite3", goose's name for SQLite with either
// driver.
func (d *Dialect) GooseDialect() string { return "sqlite3" }

// MigrationLock returns a lock row: SQLite has no session locks, and
// holding its write lock would block the migration itself. A lock older
// than ten minutes is taken to be left by a crashed process.
func (d *Dialect) MigrationLock() dialects.SessionLocker { return migrationLock{} }

// MigrationRace reports SQLITE_BUSY and SQLITE_LOCKED, from either driver:
// two processes that open or change a new database file together can find
// it locked at once, whatever their busy timeout.
func (d *Dialect) MigrationRace(err error) bool { return busy(err) }

// Hint returns "".
func (d *Dialect) Hint(error) string { return "" }

// MissingTable reports "no such table", which SQLite gives for a missing
// table and for a missing attached database alike, with the generic
// SQLITE_ERROR code.
func (d *Dialect) MissingTable(err error) bool { return missingTable(err) }

func missingTable(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such table")
}

// AgeSQL returns a row's age and its expiry by NowMillis.
func (d *Dialect) AgeSQL() (age, expired string) {
	return `((` + NowMillis + ` - created_at) / 1000.0)`, `expires_at <= ` + NowMillis
}

func busy(err error) bool {
	c := code(err) & 0xff
	return c == 5 || c == 6 // SQLITE_BUSY, SQLITE_LOCKED
}

type migrationLock struct{}

func (migrationLock) SessionLock(ctx context.Context, conn *sql.Conn) error {
	// Another process may be creating the table: the INSERT below waits
	// for it.
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS idempotency_migration_lock (
	id INTEGER PRIMARY KEY CHECK (id = 1), taken_at INTEGER NOT NULL)`); err != nil && !busy(err) {
		return fmt.Errorf("create the migration lock table: %w", err)
	}
	for {
		res, err := conn.ExecContext(ctx, `INSERT INTO idempotency_migration_lock (id, taken_at)
VALUES (1, CAST(strftime('%s', 'now') AS INTEGER))
ON CONFLICT (id) DO UPDATE SET taken_at = excluded.taken_at
WHERE idempotency_migration_lock.taken_at < excluded.taken_at - 600`)
		if err == nil {
			if n, _ := res.RowsAffected(); n == 1 {
				return nil
			}
		} else if !busy(err) && !missingTable(err) {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (migrationLock) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, `DELETE FROM idempotency_migration_lock`)
	return err
}
