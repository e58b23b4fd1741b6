// Package testdb gives tests a real, empty, migrated database of each kind.
//
// Server databases come from IDEMPOTENCY_POSTGRES_DSN and
// IDEMPOTENCY_MYSQL_DSN; without them, testcontainers-go starts a server
// where Docker runs; without Docker the test is skipped with a message that
// says how to provide one, except under CI=true, where it fails. Each Open
// gets its own Postgres schema or MySQL database, dropped at cleanup, so
// tests and packages run in parallel without seeing each other's keys.
// SQLite always runs, on a file in the test's temporary directory.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
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
	db := b.OpenEmpty(t)
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
	dsn := b.DSN(t)
	db, err := sqlx.Open(b.Driver, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", b.Name, err)
	}
	db.SetMaxOpenConns(64)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// DSN returns the data source name of an isolated, empty database.
func (b Backend) DSN(t testing.TB) string {
	t.Helper()
	switch b.Kind {
	case "sqlite":
		return SQLiteDSN(filepath.Join(t.TempDir(), "test.db"))
	case "postgres":
		return postgresSchema(t, serverDSN(t, "postgres"))
	case "mysql":
		return mysqlDatabase(t, serverDSN(t, "mysql"))
	}
	t.Fatalf("unknown backend %q", b.Name)
	return ""
}

// SQLiteDSN is the DSN the project recommends for modernc.org/sqlite.
func SQLiteDSN(path string) string {
	return "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
}

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

func randomName() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "t_" + hex.EncodeToString(b)
}

// postgresSchema creates a schema and returns a DSN whose search_path is it.
func postgresSchema(t testing.TB, dsn string) string {
	t.Helper()
	admin, err := sqlx.Open("pgx", dsn)
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	defer admin.Close()
	name := randomName()
	if _, err := admin.Exec("CREATE SCHEMA " + name); err != nil {
		t.Fatalf("postgres at %s: %v", dsn, err)
	}
	t.Cleanup(func() {
		admin, err := sqlx.Open("pgx", dsn)
		if err != nil {
			return
		}
		defer admin.Close()
		_, _ = admin.Exec("DROP SCHEMA " + name + " CASCADE")
	})
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("parse postgres DSN: %v", err)
		}
		q := u.Query()
		q.Set("search_path", name)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + name
}

// mysqlDatabase creates a database and returns a DSN that uses it.
func mysqlDatabase(t testing.TB, dsn string) string {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatalf("parse mysql DSN: %v", err)
	}
	admin, err := sqlx.Open("mysql", dsn)
	if err != nil {
		t.Fatalf("open mysql: %v", err)
	}
	defer admin.Close()
	name := randomName()
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("mysql at %s: %v", dsn, err)
	}
	t.Cleanup(func() {
		admin, err := sqlx.Open("mysql", dsn)
		if err != nil {
			return
		}
		defer admin.Close()
		_, _ = admin.Exec("DROP DATABASE " + name)
	})
	cfg.DBName = name
	cfg.ParseTime = true
	return cfg.FormatDSN()
}

// Rehost returns dsn with its server address replaced by addr, and the
// address it had: for sending a connection through a proxy.
func Rehost(t testing.TB, kind, dsn, addr string) (rehosted, target string) {
	t.Helper()
	switch kind {
	case "postgres":
		u, err := url.Parse(dsn)
		if err != nil || u.Host == "" {
			t.Fatalf("want a postgres:// URL to rehost, got %q", dsn)
		}
		target = u.Host
		u.Host = addr
		return u.String(), target
	case "mysql":
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			t.Fatal(err)
		}
		target = cfg.Addr
		cfg.Addr = addr
		return cfg.FormatDSN(), target
	}
	t.Fatalf("cannot rehost a %s DSN", kind)
	return "", ""
}
