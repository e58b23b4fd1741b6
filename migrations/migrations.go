// Package migrations holds the key table's schema as goose v3 SQL migrations,
// one folder per dialect, embedded, and applies them.
//
// Up keeps its own version table, idempotency_goose_db_version, so it never
// touches the application's goose_db_version, and takes a database-wide
// lock, so that many instances may call it at start-up together.
//
// The same files work with the goose command line; give it the version
// table:
//
//	goose -dir migrations/postgres -table idempotency_goose_db_version postgres "$DSN" up
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/exactlyonce/idempotency/dialects"
)

// VersionTable is the goose version table the migrations use.
const VersionTable = "idempotency_goose_db_version"

//go:embed postgres/*.sql mysql/*.sql sqlite/*.sql
var files embed.FS

// lockID is the Postgres advisory lock Up holds while it migrates (not
// goose's default, so it never waits on the application's own migrations).
const lockID int64 = 0x1de5_0a7c_e11e_0001

// FS returns the migrations of one dialect ("postgres", "mysql" or
// "sqlite"), for tools that run goose themselves.
func FS(dialect string) (fs.FS, error) {
	switch dialect {
	case "postgres", "mysql", "sqlite":
		return fs.Sub(files, dialect)
	}
	return nil, fmt.Errorf("idempotency/migrations: no migrations for dialect %q: use postgres, mysql or sqlite", dialect)
}

// Up applies every pending migration for db's dialect.
func Up(ctx context.Context, db *sqlx.DB) error {
	p, err := Provider(db)
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		_, err := p.Up(ctx)
		// Two processes migrating a new database together can trip over each
		// other before the lock is theirs: SQLite answers SQLITE_BUSY at once
		// when both open or switch the file, and goose on MariaDB was seen
		// (rarely) to read the version table just created by the other one
		// before its first row. Both pass on a second try, under the lock.
		if err != nil && (busy(err) || strings.Contains(err.Error(), "missing zero version")) && attempt < 10 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("idempotency/migrations: up: %w", err)
		}
		return nil
	}
}

// Status lists the migrations and whether each is applied. On MySQL the DSN
// needs parseTime=true.
func Status(ctx context.Context, db *sqlx.DB) ([]*goose.MigrationStatus, error) {
	p, err := Provider(db)
	if err != nil {
		return nil, err
	}
	st, err := p.Status(ctx)
	if err != nil {
		if db.DriverName() == "mysql" && strings.Contains(err.Error(), "time.Time") {
			return nil, fmt.Errorf("idempotency/migrations: status: add parseTime=true to the MySQL DSN (goose reads its timestamps as times): %w", err)
		}
		return nil, fmt.Errorf("idempotency/migrations: status: %w", err)
	}
	return st, nil
}

// Provider returns a goose provider for db's dialect with the settings Up
// uses: its own version table, no global registry, a database-wide lock.
// Do not call its Close: that would close db.
func Provider(db *sqlx.DB) (*goose.Provider, error) {
	if db == nil {
		return nil, errors.New("idempotency/migrations: nil *sqlx.DB")
	}
	kind, ok := dialects.Kind(db.DriverName())
	if !ok {
		return nil, fmt.Errorf("idempotency/migrations: no migrations for driver %q: use postgres, pgx, mysql, sqlite or sqlite3", db.DriverName())
	}
	fsys, err := FS(kind)
	if err != nil {
		return nil, err
	}
	var (
		dialect goose.Dialect
		locker  lock.SessionLocker
	)
	switch kind {
	case "postgres":
		dialect = goose.DialectPostgres
		locker, err = lock.NewPostgresSessionLocker(lock.WithLockID(lockID), lock.WithLockTimeout(1, 600))
		if err != nil {
			return nil, err
		}
	case "mysql":
		dialect, locker = goose.DialectMySQL, mysqlLocker{}
	case "sqlite":
		dialect, locker = goose.DialectSQLite3, sqliteLocker{}
	}
	return goose.NewProvider(dialect, db.DB, fsys,
		goose.WithTableName(VersionTable),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(locker),
	)
}

// mysqlLocker holds a named lock for the session; the server frees it if the
// process dies.
type mysqlLocker struct{}

const mysqlLockName = "idempotency_migrations"

func (mysqlLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 600)", mysqlLockName).Scan(&got); err != nil {
		return fmt.Errorf("take the migration lock: %w", err)
	}
	if got.Int64 != 1 {
		return errors.New("take the migration lock: another instance held it for 10 minutes")
	}
	return nil
}

func (mysqlLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, "SELECT RELEASE_LOCK(?)", mysqlLockName)
	return err
}

// sqliteLocker is a lock row: SQLite has no session locks, and holding its
// write lock would block the migration itself. A lock older than ten
// minutes is taken to be left by a crashed process.
type sqliteLocker struct{}

func (sqliteLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
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

func (sqliteLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, `DELETE FROM idempotency_migration_lock`)
	return err
}

func busy(err error) bool {
	var c interface{ Code() int }
	return errors.As(err, &c) && (c.Code()&0xff == 5 || c.Code()&0xff == 6)
}

func missingTable(err error) bool {
	// Another instance may race the CREATE TABLE; the next loop sees it.
	return err != nil && strings.Contains(err.Error(), "no such table")
}
