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
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/pressly/goose/v3"

	"github.com/exactlyonce/idempotency/dialects"
	// The dialects of this module, registered for their drivers' names;
	// each has a folder of migrations here, named as the dialect.
	_ "github.com/exactlyonce/idempotency/dialects/mysql"
	_ "github.com/exactlyonce/idempotency/dialects/postgres"
	_ "github.com/exactlyonce/idempotency/dialects/sqlite"
)

// VersionTable is the goose version table the migrations use.
const VersionTable = "idempotency_goose_db_version"

//go:embed postgres/*.sql mysql/*.sql sqlite/*.sql
var files embed.FS

// FS returns the migrations of one dialect, named as the dialect's Name
// ("postgres", "mysql" or "sqlite"), for tools that run goose themselves.
func FS(dialect string) (fs.FS, error) {
	names := folders()
	if !slices.Contains(names, dialect) {
		return nil, fmt.Errorf("idempotency/migrations: no migrations for dialect %q: there are %s", dialect, strings.Join(names, ", "))
	}
	return fs.Sub(files, dialect)
}

// folders lists the dialects that have migrations.
func folders() []string {
	entries, _ := files.ReadDir(".")
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

// Up applies every pending migration for db's dialect.
func Up(ctx context.Context, db *sqlx.DB) error {
	s, err := schema(db)
	if err != nil {
		return err
	}
	p, err := provider(db, s)
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		_, err := p.Up(ctx)
		// Two processes migrating a new database together can trip over each
		// other before the lock is theirs (goose creates its version table
		// before it takes the lock): the dialect knows how (SQLite is busy,
		// MariaDB shows the version table before its first row). Such a race
		// passes on another try.
		if err != nil && s.MigrationRace(err) && attempt < 10 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("idempotency/migrations: up: %w", explain(s, err))
		}
		return nil
	}
}

// Status lists the migrations and whether each is applied. On MySQL the DSN
// needs parseTime=true.
func Status(ctx context.Context, db *sqlx.DB) ([]*goose.MigrationStatus, error) {
	s, err := schema(db)
	if err != nil {
		return nil, err
	}
	p, err := provider(db, s)
	if err != nil {
		return nil, err
	}
	st, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("idempotency/migrations: status: %w", explain(s, err))
	}
	return st, nil
}

// Provider returns a goose provider for db's dialect with the settings Up
// uses: its own version table, no global registry, a database-wide lock.
// Do not call its Close: that would close db.
func Provider(db *sqlx.DB) (*goose.Provider, error) {
	s, err := schema(db)
	if err != nil {
		return nil, err
	}
	return provider(db, s)
}

// schema finds the dialect of db's driver.
func schema(db *sqlx.DB) (dialects.Schema, error) {
	if db == nil {
		return nil, errors.New("idempotency/migrations: nil *sqlx.DB")
	}
	d, err := dialects.Open(db.DriverName(), dialects.DefaultTable)
	if err != nil {
		return nil, fmt.Errorf("idempotency/migrations: %w", err)
	}
	s, ok := d.(dialects.Schema)
	if !ok {
		return nil, fmt.Errorf("idempotency/migrations: the %s dialect of driver %q has no migrations (it does not implement dialects.Schema)", d.Name(), db.DriverName())
	}
	return s, nil
}

func provider(db *sqlx.DB, s dialects.Schema) (*goose.Provider, error) {
	fsys, err := FS(s.Name())
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.Dialect(s.GooseDialect()), db.DB, fsys,
		goose.WithTableName(VersionTable),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(s.MigrationLock()),
	)
}

// explain adds the dialect's hint to err, if it has one.
func explain(s dialects.Schema, err error) error {
	if hint := s.Hint(err); hint != "" {
		return fmt.Errorf("%s: %w", hint, err)
	}
	return err
}
