package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // pgx
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"  // postgres
	_ "modernc.org/sqlite" // sqlite

	"github.com/exactlyonce/idempotency/dialects/sqlite"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
	"github.com/exactlyonce/idempotency/migrations"
)

// backend is one database, driver and DSN setting under measurement.
type backend struct {
	name    string // as printed: "pgx", "postgres+binary_parameters", ...
	driver  string // database/sql driver name
	kind    string // "sqlite", "postgres", "mysql"
	dsn     string // DSN of the isolated database (or SQLite file)
	cleanup func()

	// native: pgx's own API through the pgx store, not database/sql.
	native bool
	// txnMode is TiDB's tidb_txn_mode for every connection; "" on every
	// server but TiDB.
	txnMode string
	// bouncer: the calls reach PostgreSQL through PgBouncer in transaction
	// pooling (IDEMPOTENCY_PGBOUNCER_DSN), with the settings
	// docs/scale-out.md gives; the setup reaches it directly.
	bouncer bool

	// The statements each workload sends besides the core's own.
	business  string // the business row: (ref, amount)
	keyRow    string // the hand-written lower bound: one INSERT of key+value
	emptyTrip string // a statement that does nothing: one round trip
	countRows string // business rows of one ref

	// serverCPU reads the server's CPU time, where the bench runs on its
	// machine (MariaDB and MySQL, through their pid file and /proc); nil
	// elsewhere.
	serverCPU func() time.Duration
}

// variants expands a -backends name into the DSN settings to measure:
// plain (the driver's defaults) and recommended.
func variants(name, settings string) ([]backend, error) {
	plain := settings == "both" || settings == "plain"
	rec := settings == "both" || settings == "recommended"
	var out []backend
	switch name {
	case "sqlite":
		// synchronous(FULL) syncs the WAL at every commit ("fsync on", as
		// the targets were set); NORMAL, which internal/testdb uses, does
		// not, so a commit costs no more than a statement.
		out = append(out, backend{name: "sqlite", driver: "sqlite", kind: "sqlite"})
		if plain {
			out = append(out, backend{name: "sqlite+synchronous=NORMAL", driver: "sqlite", kind: "sqlite"})
		}
	case "pgx":
		out = append(out, backend{name: "pgx", driver: "pgx", kind: "postgres"})
	case "pgxstore":
		// Migrations and setup go through database/sql; the calls through
		// a pgxpool.Pool and the pgx store, against pgx's own bare
		// transaction.
		out = append(out, backend{name: "pgxstore", driver: "pgx", kind: "postgres", native: true})
	case "pgxstore+pgbouncer":
		out = append(out, backend{name: name, driver: "pgx", kind: "postgres", native: true, bouncer: true})
	case "postgres+pgbouncer":
		out = append(out, backend{name: name, driver: "postgres", kind: "postgres", bouncer: true})
	case "postgres", "pq":
		if plain {
			out = append(out, backend{name: "postgres", driver: "postgres", kind: "postgres"})
		}
		if rec {
			out = append(out, backend{name: "postgres+binary_parameters", driver: "postgres", kind: "postgres"})
		}
	case "mysql", "tidb", "tidb-optimistic":
		// The mysql dialect on MySQL or MariaDB, or on TiDB in its default
		// pessimistic mode or with tidb_txn_mode='optimistic' on every
		// connection.
		base := backend{name: name, driver: "mysql", kind: "mysql"}
		switch name {
		case "tidb":
			base.txnMode = "pessimistic"
		case "tidb-optimistic":
			base.txnMode = "optimistic"
		}
		if plain {
			out = append(out, base)
		}
		if rec {
			base.name += "+interpolateParams"
			out = append(out, base)
			if name != "mysql" || settings == "both" {
				// MySQL 8's and TiDB's claim in one round trip.
				base.name += "+multiStatements"
				out = append(out, base)
			}
		}
	default:
		return nil, fmt.Errorf("unknown backend %q: use sqlite, pgx, pgxstore, postgres, mysql, tidb, tidb-optimistic, pgxstore+pgbouncer or postgres+pgbouncer", name)
	}
	return out, nil
}

// serverDSN is the DSN of the backend's server, from the environment.
func (b *backend) serverDSN() (string, error) {
	server := b.kind
	if b.txnMode != "" {
		server = "tidb"
	}
	env := scratch.EnvDSN[server]
	dsn := os.Getenv(env)
	if dsn == "" {
		return "", fmt.Errorf("%s: set %s", b.name, env)
	}
	return dsn, nil
}

// setup creates the isolated database, migrates it and creates the business
// table. The dropping happens in b.cleanup.
func (b *backend) setup(ctx context.Context, tmp string) error {
	switch b.kind {
	case "sqlite":
		sync := "FULL"
		if b.name == "sqlite+synchronous=NORMAL" {
			sync = "NORMAL"
		}
		b.dsn = scratch.SQLiteDSN(filepath.Join(tmp, scratch.Name("bench_")+".db"), sync)
		b.cleanup = func() {}
	case "postgres", "mysql":
		dsn, err := b.serverDSN()
		if err != nil {
			return err
		}
		sc, err := scratch.New(ctx, b.kind, dsn, "bench_")
		if err != nil {
			return fmt.Errorf("%s: %w", b.name, err)
		}
		b.cleanup = func() { _ = sc.Drop(context.Background()) }
		b.dsn = sc.DSN
		switch {
		case b.name == "postgres+binary_parameters":
			b.dsn, err = scratch.PostgresParams(sc.DSN, map[string]string{"binary_parameters": "yes"})
		case b.kind == "mysql":
			var cfg *mysql.Config
			if cfg, err = mysql.ParseDSN(sc.DSN); err == nil {
				cfg.InterpolateParams = strings.Contains(b.name, "+interpolateParams")
				cfg.MultiStatements = strings.Contains(b.name, "+multiStatements")
				if b.txnMode != "" {
					scratch.TiDBTxnMode(cfg, b.txnMode)
				}
				b.dsn = cfg.FormatDSN()
			}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", b.name, err)
		}
	}

	db, err := sqlx.Open(b.driver, b.dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := migrations.Up(ctx, db); err != nil {
		return fmt.Errorf("%s: %w", b.name, err)
	}
	var table string
	switch b.kind {
	case "postgres":
		b.serverCPU = postgresCPU(b.driver, b.dsn)
		table = `CREATE TABLE bench_orders (id bigserial PRIMARY KEY, ref text NOT NULL, amount bigint NOT NULL)`
		b.business = `INSERT INTO bench_orders (ref, amount) VALUES ($1, $2)`
		b.countRows = `SELECT COUNT(*) FROM bench_orders WHERE ref = $1`
		b.keyRow = `INSERT INTO idempotency_keys (scope, key, fingerprint, value, failed, created_at, expires_at)
VALUES ($1, $2, $3, $4, false, now(), now() + interval '1 day')`
		b.emptyTrip = `SELECT 1`
	case "mysql":
		table = `CREATE TABLE bench_orders (id bigint AUTO_INCREMENT PRIMARY KEY, ref varchar(255) NOT NULL, amount bigint NOT NULL) ENGINE = InnoDB`
		b.business = `INSERT INTO bench_orders (ref, amount) VALUES (?, ?)`
		b.countRows = `SELECT COUNT(*) FROM bench_orders WHERE ref = ?`
		b.keyRow = "INSERT INTO idempotency_keys (scope, `key`, fingerprint, value, failed, created_at, expires_at)\n" +
			`VALUES (?, ?, ?, ?, FALSE, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 DAY)`
		b.emptyTrip = `DO 1`
		if b.txnMode == "" { // TiDB has no pid file to find it by
			b.serverCPU = mysqlCPU(ctx, db)
		}
	case "sqlite":
		table = `CREATE TABLE bench_orders (id INTEGER PRIMARY KEY, ref TEXT NOT NULL, amount INTEGER NOT NULL)`
		b.business = `INSERT INTO bench_orders (ref, amount) VALUES (?, ?)`
		b.countRows = `SELECT COUNT(*) FROM bench_orders WHERE ref = ?`
		b.keyRow = `INSERT INTO idempotency_keys (scope, "key", fingerprint, value, failed, created_at, expires_at)
VALUES (?, ?, ?, ?, 0, ` + sqlite.NowMillis + `, ` + sqlite.NowMillis + ` + 86400000)`
		b.emptyTrip = `SELECT 1`
	}
	if _, err := db.ExecContext(ctx, table); err != nil {
		return fmt.Errorf("%s: create bench_orders: %w", b.name, err)
	}
	if b.bouncer {
		return b.throughPgBouncer()
	}
	return nil
}

// throughPgBouncer points b's DSN at PgBouncer, with the setting that
// sends each statement in one exchange (docs/scale-out.md).
func (b *backend) throughPgBouncer() error {
	bouncer := os.Getenv(scratch.EnvDSN["pgbouncer"])
	if bouncer == "" {
		return fmt.Errorf("%s: set %s", b.name, scratch.EnvDSN["pgbouncer"])
	}
	addr, err := scratch.Addr("postgres", bouncer)
	if err != nil {
		return err
	}
	if b.dsn, err = scratch.Rehost("postgres", b.dsn, addr); err != nil {
		return err
	}
	b.dsn, err = scratch.BouncedDSN(b.driver, b.dsn)
	return err
}

// withAddr points the backend's DSN at addr (host:port), for the counting
// proxy.
func (b *backend) withAddr(addr string) (string, error) { return scratch.Rehost(b.kind, b.dsn, addr) }

// target is the server's host:port.
func (b *backend) target() (string, error) { return scratch.Addr(b.kind, b.dsn) }

// mysqlCPU finds the server's process through its pid file, if the server
// runs on this machine.
func mysqlCPU(ctx context.Context, db *sqlx.DB) func() time.Duration {
	var file string
	if err := db.GetContext(ctx, &file, `SELECT @@pid_file`); err != nil {
		return nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return nil
	}
	return procCPU(pid)
}

// postgresCPU reads the CPU time of the Postgres processes that work for
// the bench's database: its connections (and autovacuum's), and the
// server's background processes (WAL writer, checkpointer), where the
// server runs on this machine; nil where it does not. Other databases'
// connections on the same server are not counted.
func postgresCPU(driver, dsn string) func() time.Duration {
	db, err := sqlx.Open(driver, dsn)
	if err != nil {
		return nil
	}
	db.SetMaxOpenConns(1)
	pids := func() []int {
		var ps []int
		if err := db.Select(&ps, `SELECT pid FROM pg_stat_activity
WHERE datname = current_database() OR backend_type NOT IN ('client backend', 'autovacuum worker')`); err != nil {
			return nil
		}
		return ps
	}
	ps := pids()
	if len(ps) == 0 || procCPU(ps[0]) == nil {
		_ = db.Close()
		return nil
	}
	return func() time.Duration {
		var sum time.Duration
		for _, pid := range pids() {
			if f := procCPU(pid); f != nil {
				sum += f()
			}
		}
		return sum
	}
}
