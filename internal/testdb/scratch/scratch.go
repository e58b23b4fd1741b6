// Package scratch makes throwaway databases on a Postgres or MySQL server
// and rewrites DSNs to reach them, for the tests (through testdb), the
// benchmarks and the chaos run: the part of testdb that needs no
// testing.T, so that programs can use it too.
//
// A scratch database is a database of its own, on Postgres as on MySQL and
// MariaDB, not a schema: Postgres's advisory locks, which the key claim
// takes, are per database, so tests in two schemas of one database would
// see each other's keys as held.
package scratch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"net"
	"net/url"
	"strings"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // pgx, for the admin connection
	"github.com/jmoiron/sqlx"
)

// EnvDSN names the environment variable with each server's DSN:
// "postgres", "mysql", "tidb", or "pgbouncer" (PgBouncer in transaction
// pooling, in front of the "postgres" server).
var EnvDSN = map[string]string{"postgres": "IDEMPOTENCY_POSTGRES_DSN", "mysql": "IDEMPOTENCY_MYSQL_DSN", "tidb": "IDEMPOTENCY_TIDB_DSN",
	"pgbouncer": "IDEMPOTENCY_PGBOUNCER_DSN"}

// TiDBTxnMode makes every connection that cfg opens run in TiDB's
// transaction mode ("pessimistic" or "optimistic"), whatever the server's
// default: go-sql-driver/mysql sets unknown DSN parameters as session
// variables when it connects. The DSN's other parameters stay.
func TiDBTxnMode(cfg *mysql.Config, mode string) {
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	cfg.Params["tidb_txn_mode"] = "'" + mode + "'"
}

// Database is a database made by New.
type Database struct {
	Name string // the database
	DSN  string // the server's DSN, pointed at it

	kind, server string
}

// Name returns prefix followed by 12 random hex digits: a fresh identifier.
func Name(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// New creates a database named prefix and random digits on the Postgres
// (kind "postgres") or MySQL (kind "mysql") server that serverDSN reaches,
// and returns it with a DSN that uses it; the DSN keeps serverDSN's other
// settings.
func New(ctx context.Context, kind, serverDSN, prefix string) (Database, error) {
	db := Database{Name: Name(prefix), kind: kind, server: serverDSN}
	var err error
	switch kind {
	case "postgres":
		db.DSN, err = postgresDatabase(serverDSN, db.Name)
	case "mysql":
		var cfg *mysql.Config
		if cfg, err = mysql.ParseDSN(serverDSN); err == nil {
			cfg.DBName = db.Name
			db.DSN = cfg.FormatDSN()
		}
	default:
		return Database{}, fmt.Errorf("scratch: no scratch databases for kind %q: want postgres or mysql", kind)
	}
	if err != nil {
		return Database{}, fmt.Errorf("scratch: %s DSN: %w", kind, err)
	}
	if err := db.admin(ctx, "CREATE DATABASE "+db.Name); err != nil {
		return Database{}, fmt.Errorf("scratch: %s at %s: %w", kind, redact(serverDSN), err)
	}
	return db, nil
}

// Drop drops the database and everything in it. On Postgres it ends the
// sessions still connected to it first.
func (d Database) Drop(ctx context.Context) error {
	if d.kind == "mysql" {
		return d.admin(ctx, "DROP DATABASE "+d.Name)
	}
	err := d.admin(ctx, "DROP DATABASE "+d.Name+" WITH (FORCE)")
	if err == nil {
		return nil
	}
	// Before Postgres 13 there is no FORCE.
	if err2 := d.admin(ctx, "DROP DATABASE "+d.Name); err2 != nil {
		return errors.Join(err, err2)
	}
	return nil
}

// admin runs one statement on a connection of its own to the server.
func (d Database) admin(ctx context.Context, stmt string) error {
	driver := "pgx"
	if d.kind == "mysql" {
		driver = "mysql"
	}
	admin, err := sqlx.Open(driver, d.server)
	if err != nil {
		return err
	}
	defer admin.Close()
	_, err = admin.ExecContext(ctx, stmt)
	return err
}

// postgresDatabase points a Postgres DSN, a URL or key=value pairs, at the
// database name.
func postgresDatabase(dsn, name string) (string, error) {
	if !isURL(dsn) {
		return dsn + " dbname=" + name, nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", err
	}
	u.Path, u.RawPath = "/"+name, ""
	return u.String(), nil
}

// Addr returns the host:port of the server that dsn (of kind "postgres" or
// "mysql") reaches over TCP. A Postgres DSN must be a postgres:// URL.
func Addr(kind, dsn string) (string, error) {
	switch kind {
	case "postgres":
		u, err := postgresURL(dsn)
		if err != nil {
			return "", err
		}
		if u.Port() == "" {
			return net.JoinHostPort(u.Hostname(), "5432"), nil
		}
		return u.Host, nil
	case "mysql":
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			return "", err
		}
		if cfg.Net != "tcp" {
			return "", fmt.Errorf("scratch: the MySQL DSN reaches its server over %q, not TCP", cfg.Net)
		}
		return cfg.Addr, nil
	}
	return "", fmt.Errorf("scratch: a %s database has no server address", kind)
}

// Rehost returns dsn with its server address replaced by addr (host:port),
// to reach the server through a proxy; everything else is kept.
func Rehost(kind, dsn, addr string) (string, error) {
	switch kind {
	case "postgres":
		u, err := postgresURL(dsn)
		if err != nil {
			return "", err
		}
		u.Host = addr
		return u.String(), nil
	case "mysql":
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			return "", err
		}
		cfg.Net, cfg.Addr = "tcp", addr
		return cfg.FormatDSN(), nil
	}
	return "", fmt.Errorf("scratch: a %s database has no server to rehost", kind)
}

// PostgresParams adds run-time parameters (binary_parameters, say) to a
// Postgres DSN, a URL or key=value pairs.
func PostgresParams(dsn string, params map[string]string) (string, error) {
	if !isURL(dsn) {
		for k, v := range params {
			dsn += " " + k + "=" + v
		}
		return dsn, nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", err
	}
	q := u.Query()
	for k, v := range params {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func isURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

func postgresURL(dsn string) (*url.URL, error) {
	if !isURL(dsn) {
		return nil, errors.New("scratch: want a postgres:// URL DSN, not key=value pairs")
	}
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("scratch: want a postgres:// URL DSN with a host: %v", err)
	}
	return u, nil
}

// redact returns dsn without its password, for error messages.
func redact(dsn string) string {
	if isURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			return u.Redacted()
		}
		return "a Postgres URL"
	}
	if cfg, err := mysql.ParseDSN(dsn); err == nil && cfg.Passwd != "" {
		cfg.Passwd = "xxxxx"
		return cfg.FormatDSN()
	}
	return dsn
}

// SQLiteDSN is the DSN the project recommends for modernc.org/sqlite, with
// the synchronous setting given: NORMAL (the tests') does not sync the WAL
// at each commit, FULL does.
func SQLiteDSN(path, synchronous string) string {
	return "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(" + synchronous + ")&_txlock=immediate"
}

// NoCancelRequests makes a pgx connection end a statement whose context
// ended by closing the connection, as a deadline does, instead of sending
// PostgreSQL a cancel request: through Debian's PgBouncer 1.18, some
// cancel requests make PgBouncer exit (its issues 801 and 822).
func NoCancelRequests(cfg *pgx.ConnConfig) {
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
}

// BouncedDSN sets, in a Postgres URL that reaches PgBouncer in transaction
// pooling, the mode in which driver ("postgres" for lib/pq; pgx otherwise)
// sends each statement with its parameters in one exchange: PgBouncer
// before 1.21 may hand the session's server connection to another client
// between two exchanges outside a transaction, and a statement parsed in
// the first would be gone in the second (lib/pq by default parses, then
// binds; pgx prepares named statements).
func BouncedDSN(driver, dsn string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("scratch: a PgBouncer DSN: %w", err)
	}
	q := u.Query()
	q.Del("binary_parameters")
	q.Del("default_query_exec_mode")
	if driver == "postgres" {
		q.Set("binary_parameters", "yes")
	} else {
		q.Set("default_query_exec_mode", "exec")
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}
