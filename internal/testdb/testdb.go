// Package testdb gives tests a real, empty, migrated database of each kind.
//
// Server databases come from IDEMPOTENCY_POSTGRES_DSN and
// IDEMPOTENCY_MYSQL_DSN; without them, testcontainers-go starts a server
// where Docker runs; without Docker the test is skipped with a message that
// says how to provide one, except under CI=true, where it fails. Each Open
// gets a database of its own on the server (see package scratch), dropped
// at cleanup, so tests and packages run in parallel without seeing each
// other's keys, or their locks.
// SQLite always runs, on a file in the test's temporary directory.
package testdb

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // pgx
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // postgres
	tcmysql "github.com/testcontainers/testcontainers-go/modules/mysql"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	_ "modernc.org/sqlite" // sqlite

	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
	"github.com/exactlyonce/idempotency/migrations"
)

// Backend is one database and driver the suites run against.
type Backend struct {
	Name   string // "sqlite", "postgres", "pgx", "mysql"
	Driver string // database/sql driver name
	Kind   string // dialect: "sqlite", "postgres", "mysql"
}

// Backends lists every backend the suites cover.
func Backends() []Backend {
	return []Backend{
		{Name: "sqlite", Driver: "sqlite", Kind: "sqlite"},
		{Name: "postgres", Driver: "postgres", Kind: "postgres"},
		{Name: "pgx", Driver: "pgx", Kind: "postgres"},
		{Name: "mysql", Driver: "mysql", Kind: "mysql"},
	}
}

// Open returns a migrated database of b's kind, isolated for this test.
func (b Backend) Open(t testing.TB) *sqlx.DB {
	t.Helper()
	return b.OpenDSN(t, b.DSN(t))
}

// OpenDSN connects to dsn (see Connect) and migrates its database.
func (b Backend) OpenDSN(t testing.TB, dsn string) *sqlx.DB {
	t.Helper()
	db := b.Connect(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := migrations.Up(ctx, db); err != nil {
		t.Fatalf("migrate %s: %v", b.Name, err)
	}
	return db
}

// OpenEmpty is Open without the migrations.
func (b Backend) OpenEmpty(t testing.TB) *sqlx.DB {
	t.Helper()
	return b.Connect(t, b.DSN(t))
}

// Connect opens dsn with b's driver, with room for 64 connections, and
// closes it at t's cleanup.
func (b Backend) Connect(t testing.TB, dsn string) *sqlx.DB {
	t.Helper()
	db, err := sqlx.Open(b.Driver, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", b.Name, err)
	}
	db.SetMaxOpenConns(64)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// MigrationFiles lists the goose files migrations embeds for kind, in
// order.
func MigrationFiles(t testing.TB, kind string) []string {
	t.Helper()
	fsys, err := migrations.FS(kind)
	if err != nil {
		t.Fatal(err)
	}
	files, err := fs.Glob(fsys, "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations for %s: %v", kind, err)
	}
	return files
}

// Charges creates the business table of the tests: fn writes a row per
// charge through its transaction, so a test can count effects. Every
// suite uses this one shape, on every database.
const Charges = `CREATE TABLE charges (ref VARCHAR(255) NOT NULL, amount INTEGER NOT NULL)`

// DSN returns the data source name of an isolated, empty database.
func (b Backend) DSN(t testing.TB) string {
	t.Helper()
	switch b.Kind {
	case "sqlite":
		return SQLiteDSN(filepath.Join(t.TempDir(), "test.db"))
	case "postgres", "mysql":
		return scratchDSN(t, b.Kind, serverDSN(t, b.Kind))
	}
	t.Fatalf("unknown backend %q", b.Name)
	return ""
}

// SQLiteDSN is the DSN the project recommends for modernc.org/sqlite.
func SQLiteDSN(path string) string { return scratch.SQLiteDSN(path, "NORMAL") }

// ServerDSN returns the DSN of the Postgres or MySQL server (kind), as the
// environment gives it or as a container started for this process.
func ServerDSN(t testing.TB, kind string) string { return serverDSN(t, kind) }

// container is the server started for one kind, once per process. Each kind
// has its own, so that starting both at once writes no shared state.
type container struct {
	once sync.Once
	dsn  string
	err  error
}

var containers = map[string]*container{"postgres": {}, "mysql": {}}

func serverDSN(t testing.TB, kind string) string {
	t.Helper()
	env := map[string]string{"postgres": "IDEMPOTENCY_POSTGRES_DSN", "mysql": "IDEMPOTENCY_MYSQL_DSN"}[kind]
	if dsn := os.Getenv(env); dsn != "" {
		return dsn
	}
	c := containers[kind]
	c.once.Do(func() { c.dsn, c.err = start(kind) })
	if err := c.err; err != nil {
		msg := fmt.Sprintf("no %s database: set %s (for example %s) or run Docker for testcontainers: %v",
			kind, env, exampleDSN[kind], err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return c.dsn
}

var exampleDSN = map[string]string{
	"postgres": "postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
	"mysql":    "root@tcp(127.0.0.1:3306)/test",
}

// start starts a server of kind; tests of this package replace it.
var start = startContainer

func startContainer(kind string) (dsn string, err error) {
	defer func() {
		// testcontainers panics in some environments without Docker.
		if r := recover(); r != nil {
			err = fmt.Errorf("testcontainers: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	switch kind {
	case "postgres":
		c, err := tcpostgres.Run(ctx, "postgres:16-alpine", tcpostgres.WithDatabase("test"),
			tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"), tcpostgres.BasicWaitStrategies())
		if err != nil {
			return "", err
		}
		return c.ConnectionString(ctx, "sslmode=disable")
	default:
		c, err := tcmysql.Run(ctx, "mariadb:10.11", tcmysql.WithDatabase("test"),
			tcmysql.WithUsername("root"), tcmysql.WithPassword("test"))
		if err != nil {
			return "", err
		}
		return c.ConnectionString(ctx)
	}
}

// scratchDSN creates a database on the server, for this test only, and
// returns a DSN that uses it.
func scratchDSN(t testing.TB, kind, server string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := scratch.New(ctx, kind, server, "t_")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = db.Drop(ctx)
	})
	if kind != "mysql" {
		return db.DSN
	}
	cfg, err := mysql.ParseDSN(db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ParseTime = true
	return cfg.FormatDSN()
}

// Rehost returns dsn with its server address replaced by addr, and the
// address it had: for sending a connection through a proxy.
func Rehost(t testing.TB, kind, dsn, addr string) (rehosted, target string) {
	t.Helper()
	target, err := scratch.Addr(kind, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if rehosted, err = scratch.Rehost(kind, dsn, addr); err != nil {
		t.Fatal(err)
	}
	return rehosted, target
}
