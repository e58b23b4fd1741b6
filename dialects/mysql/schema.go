package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/exactlyonce/idempotency/dialects"
)

// GooseDialect returns "mysql".
func (d *Dialect) GooseDialect() string { return "mysql" }

// MigrationLock returns a named lock held by the session, which the server
// frees if the process dies.
func (d *Dialect) MigrationLock() dialects.SessionLocker { return migrationLock{} }

// MigrationRace reports goose's "missing zero version": DDL commits at
// once, so a process can find goose's version table that another has just
// created before its first row is there. The next try, under the
// migration lock, finds both.
func (d *Dialect) MigrationRace(err error) bool {
	return err != nil && strings.Contains(err.Error(), "missing zero version")
}

// Hint asks for parseTime=true when goose could not read its timestamps.
func (d *Dialect) Hint(err error) string {
	if err != nil && strings.Contains(err.Error(), "time.Time") {
		return "add parseTime=true to the MySQL DSN (goose reads its timestamps as times)"
	}
	return ""
}

// MissingTable reports errors 1146 (no such table) and 1049 (no such
// database).
func (d *Dialect) MissingTable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1146 || me.Number == 1049)
}

// AgeSQL returns a row's age and its expiry by UTC_TIMESTAMP(6).
func (d *Dialect) AgeSQL() (age, expired string) {
	return `TIMESTAMPDIFF(SECOND, created_at, UTC_TIMESTAMP(6))`, `expires_at <= UTC_TIMESTAMP(6)`
}

const migrationLockName = "idempotency_migrations"

type migrationLock struct{}

func (migrationLock) SessionLock(ctx context.Context, conn *sql.Conn) error {
	var got sql.NullInt64
	for try := 1; ; try++ {
		err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 600)", migrationLockName).Scan(&got)
		if err == nil {
			break
		}
		// TiDB takes GET_LOCK in a pessimistic transaction of its own, and
		// under contention may give up on it with 1105 "pessimistic lock
		// retry limit reached": a lost race, not a failure, so try again.
		if try == 20 || !strings.Contains(err.Error(), "lock retry limit") {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(try) * 50 * time.Millisecond):
		}
	}
	if got.Int64 != 1 {
		return errors.New("take the migration lock: another instance held it for 10 minutes")
	}
	return nil
}

func (migrationLock) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, "SELECT RELEASE_LOCK(?)", migrationLockName)
	return err
}
