// Package testdb gives tests a real, empty, migrated database of each kind.
//
// Server databases come from IDEMPOTENCY_POSTGRES_DSN,
// IDEMPOTENCY_MYSQL_DSN and IDEMPOTENCY_TIDB_DSN; without them,
// testcontainers-go starts a server
// where Docker runs; without Docker the test is skipped with a message that
// says how to provide one, except under CI=true, where it fails. Each Open
// gets a database of its own on the server (see package scratch), dropped
// at cleanup, so tests and packages run in parallel without seeing each
// other's keys, or their locks.
// SQLite always runs, on a file in the test's temporary directory.
package testdb

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib" // pgx
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // postgres
	"github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	tcmysql "github.com/testcontainers/testcontainers-go/modules/mysql"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"
	_ "modernc.org/sqlite" // sqlite

	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
	"github.com/exactlyonce/idempotency/migrations"
)

// Backend is one database and driver the suites run against.
type Backend struct {
	Name   string // "sqlite", "postgres", "pgx", "mysql", "tidb", "tidb-optimistic"
	Driver string // database/sql driver name
	Kind   string // dialect: "sqlite", "postgres", "mysql"

	// Server is the server, when it is not Kind's own: "tidb" speaks
	// MySQL's protocol and runs the mysql dialect.
	Server string
	// TxnMode is TiDB's tidb_txn_mode, set on every connection:
	// "pessimistic" or "optimistic".
	TxnMode string
}

// Backends lists every backend the suites cover. TiDB runs in both of its
// transaction modes, on one server.
func Backends() []Backend {
	return []Backend{
		{Name: "sqlite", Driver: "sqlite", Kind: "sqlite"},
		{Name: "postgres", Driver: "postgres", Kind: "postgres"},
		{Name: "pgx", Driver: "pgx", Kind: "postgres"},
		{Name: "mysql", Driver: "mysql", Kind: "mysql"},
		TiDB("pessimistic"),
		TiDB("optimistic"),
	}
}

// OwnServers is Backends without the backends on another kind's server
// (TiDB, which speaks MySQL's protocol): SQLite, Postgres through lib/pq
// and pgx, and MySQL or MariaDB.
func OwnServers() []Backend {
	var bs []Backend
	for _, b := range Backends() {
		if b.Server == "" {
			bs = append(bs, b)
		}
	}
	return bs
}

// PgBouncer lists the backends that reach PostgreSQL through PgBouncer in
// transaction pooling (IDEMPOTENCY_PGBOUNCER_DSN, which bash .ci/pgbouncer
// starts): pgx with default_query_exec_mode=exec, the setting a PgBouncer
// older than 1.21 needs (scratch.BouncedDSN), and with no cancel requests
// (scratch.NoCancelRequests). Their databases are made, and migrated, on
// PostgreSQL directly: the migrations' session lock needs a session of its
// own.
//
// lib/pq is not among them: it sends a cancel request whenever a
// statement's context ends, and Debian's PgBouncer 1.18 exits on some of
// those (its issues 801 and 822: "bad client state: 0", "server in bad
// state: 11"), which the conformance suite's cancelled contexts met in CI.
// The chaos run, which cancels none, runs lib/pq through PgBouncer too.
func PgBouncer() []Backend {
	return []Backend{
		{Name: "pgx-pgbouncer", Driver: "pgx", Kind: "postgres", Server: "pgbouncer"},
	}
}

// TiDB is the backend of TiDB in a transaction mode, "pessimistic" (its
// default) or "optimistic".
func TiDB(mode string) Backend {
	name := "tidb"
	if mode != "pessimistic" {
		name += "-" + mode
	}
	return Backend{Name: name, Driver: "mysql", Kind: "mysql", Server: "tidb", TxnMode: mode}
}

// Optimistic reports whether transactions see each other only at COMMIT
// (TiDB's optimistic mode): a twin that is still running holds no lock, so
// twins each run fn and the first to commit wins; the others replay it.
func (b Backend) Optimistic() bool { return b.TxnMode == "optimistic" }

// Env is the environment variable with the DSN of b's server; "" for
// SQLite, which needs none.
func (b Backend) Env() string { return scratch.EnvDSN[b.server()] }

// server is the server b runs on: "postgres", "mysql", "tidb" or
// "pgbouncer".
func (b Backend) server() string {
	if b.Server != "" {
		return b.Server
	}
	return b.Kind
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
	direct := db
	if b.Server == "pgbouncer" {
		direct = b.Connect(t, b.Direct(t, dsn))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := migrations.Up(ctx, direct); err != nil {
		t.Fatalf("migrate %s: %v", b.Name, err)
	}
	return db
}

// Direct returns dsn pointed at the PostgreSQL server itself where it
// reaches it through PgBouncer (for migrations), and dsn otherwise.
func (b Backend) Direct(t testing.TB, dsn string) string {
	t.Helper()
	if b.Server != "pgbouncer" {
		return dsn
	}
	addr, err := scratch.Addr("postgres", serverDSN(t, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	direct, _ := Rehost(t, "postgres", dsn, addr)
	return direct
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
	var (
		db  *sqlx.DB
		err error
	)
	if b.Server == "pgbouncer" && b.Driver == "pgx" {
		var cfg *pgx.ConnConfig
		if cfg, err = pgx.ParseConfig(dsn); err == nil {
			scratch.NoCancelRequests(cfg)
			db = sqlx.NewDb(stdlib.OpenDB(*cfg), "pgx")
		}
	} else {
		db, err = sqlx.Open(b.Driver, dsn)
	}
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
		if b.Server == "pgbouncer" {
			return b.pgbouncerDSN(t)
		}
		return b.scratchDSN(t, serverDSN(t, b.server()))
	}
	t.Fatalf("unknown backend %q", b.Name)
	return ""
}

// SQLiteDSN is the DSN the project recommends for modernc.org/sqlite.
func SQLiteDSN(path string) string { return scratch.SQLiteDSN(path, "NORMAL") }

// container is the server started for one server, once per process. Each
// has its own, so that starting them at once writes no shared state.
type container struct {
	once sync.Once
	dsn  string
	err  error
}

var containers = map[string]*container{"postgres": {}, "mysql": {}, "tidb": {}, "pgbouncer": {}}

func serverDSN(t testing.TB, server string) string {
	t.Helper()
	env := scratch.EnvDSN[server]
	if env == "" {
		t.Fatalf("testdb: unknown server %q: want postgres, mysql or tidb", server)
	}
	if dsn := os.Getenv(env); dsn != "" {
		return dsn
	}
	c := containers[server]
	c.once.Do(func() { c.dsn, c.err = start(server) })
	if err := c.err; err != nil {
		msg := fmt.Sprintf("no %s database: set %s (for example %s) or run Docker for testcontainers: %v",
			server, env, exampleDSN[server], err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return c.dsn
}

var exampleDSN = map[string]string{
	"postgres":  "postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
	"mysql":     "root@tcp(127.0.0.1:3306)/test",
	"tidb":      "root@tcp(127.0.0.1:4000)/test, which bash .ci/tidb builds, starts and prints",
	"pgbouncer": "postgres://postgres@127.0.0.1:6432/test?sslmode=disable, which bash .ci/pgbouncer installs, starts and prints",
}

// start starts a server; tests of this package replace it.
var start = startContainer

// tidbImage is the TiDB image testcontainers runs when no
// IDEMPOTENCY_TIDB_DSN is set.
const tidbImage = "pingcap/tidb:v8.5.0"

func startContainer(server string) (dsn string, err error) {
	defer func() {
		// testcontainers panics in some environments without Docker.
		if r := recover(); r != nil {
			err = fmt.Errorf("testcontainers: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	switch server {
	case "pgbouncer":
		return "", errors.New("no container is started for PgBouncer")
	case "postgres":
		c, err := tcpostgres.Run(ctx, "postgres:16-alpine", tcpostgres.WithDatabase("test"),
			tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"), tcpostgres.BasicWaitStrategies())
		if err != nil {
			return "", err
		}
		return c.ConnectionString(ctx, "sslmode=disable")
	case "tidb":
		// A one-node TiDB on its embedded storage, root with no password,
		// with a "test" database from its bootstrap.
		c, err := testcontainers.Run(ctx, tidbImage, testcontainers.WithExposedPorts("4000/tcp"),
			testcontainers.WithWaitStrategy(wait.ForSQL("4000/tcp", "mysql", func(host string, port network.Port) string {
				return fmt.Sprintf("root@tcp(%s)/test", net.JoinHostPort(host, port.Port()))
			})))
		if err != nil {
			return "", err
		}
		endpoint, err := c.PortEndpoint(ctx, "4000/tcp", "")
		if err != nil {
			return "", err
		}
		return "root@tcp(" + endpoint + ")/test", nil
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
// returns a DSN that uses it, with b's session settings.
func (b Backend) scratchDSN(t testing.TB, server string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := scratch.New(ctx, b.Kind, server, "t_")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = db.Drop(ctx)
	})
	if b.Kind != "mysql" {
		return db.DSN
	}
	cfg, err := mysql.ParseDSN(db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ParseTime = true
	if b.TxnMode != "" {
		scratch.TiDBTxnMode(cfg, b.TxnMode)
	}
	return cfg.FormatDSN()
}

// pgbouncerDSN creates a database on PostgreSQL, for this test only, and
// returns a DSN that reaches it through PgBouncer.
func (b Backend) pgbouncerDSN(t testing.TB) string {
	t.Helper()
	addr, err := scratch.Addr("postgres", serverDSN(t, "pgbouncer"))
	if err != nil {
		t.Fatal(err)
	}
	dsn, _ := Rehost(t, "postgres", b.scratchDSN(t, serverDSN(t, "postgres")), addr)
	if dsn, err = scratch.BouncedDSN(b.Driver, dsn); err != nil {
		t.Fatal(err)
	}
	return dsn
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
