package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/exactlyonce/idempotency/dialects"
)

// GooseDialect returns "postgres".
func (d *Dialect) GooseDialect() string { return "postgres" }

// MigrationLock returns a session advisory lock, which the server frees if
// the process dies. It is not goose's default lock number, so migrating
// never waits on the application's own goose migrations.
func (d *Dialect) MigrationLock() dialects.SessionLocker { return migrationLock{} }

// MigrationRace reports false: DDL is transactional, so goose creates its
// version table and first row together, and two processes cannot see one
// without the other.
func (d *Dialect) MigrationRace(error) bool { return false }

// Hint returns "".
func (d *Dialect) Hint(error) string { return "" }

// MissingTable reports SQLSTATE 42P01 (undefined table) and 3F000
// (undefined schema).
func (d *Dialect) MissingTable(err error) bool {
	state := sqlState(err)
	return state == "42P01" || state == "3F000"
}

// AgeSQL returns a row's age and its expiry by now().
func (d *Dialect) AgeSQL() (age, expired string) {
	return `EXTRACT(EPOCH FROM (now() - created_at))`, `expires_at <= now()`
}

const (
	migrationLockID   int64 = 0x1de5_0a7c_e11e_0001
	migrationLockWait       = 10 * time.Minute
)

type migrationLock struct{}

// SessionLock polls with pg_try_advisory_lock rather than waiting in
// pg_advisory_lock: a wait that ctx cancels could end just as the lock is
// granted, and leave it held by a connection that goes back to the pool.
func (migrationLock) SessionLock(ctx context.Context, conn *sql.Conn) error {
	deadline := time.Now().Add(migrationLockWait)
	for pause := 50 * time.Millisecond; ; pause = min(2*pause, time.Second) {
		var locked bool
		if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, migrationLockID).Scan(&locked); err != nil {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		if locked {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("take the migration lock: another instance held it for %v", migrationLockWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
	}
}

func (migrationLock) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	var unlocked bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_advisory_unlock($1)`, migrationLockID).Scan(&unlocked); err != nil {
		return fmt.Errorf("free the migration lock: %w", err)
	}
	if !unlocked {
		return errors.New("free the migration lock: this session did not hold it")
	}
	return nil
}
