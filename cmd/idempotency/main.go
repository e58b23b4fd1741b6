// Command idempotency migrates, prunes and inspects the key table of
// github.com/exactlyonce/idempotency, for operators and cron jobs.
//
//	idempotency [flags] migrate           apply pending migrations
//	idempotency [flags] migrate status    list migrations and whether each is applied
//	idempotency [flags] prune             delete expired keys once, in batches
//	idempotency [flags] stats             keys by age, expired backlog, total; flows running and stopped
//
// Flags may come before or after the command:
//
//	--dsn      the database (default $IDEMPOTENCY_DSN)
//	--driver   pgx, postgres, mysql or sqlite (default: from the DSN's shape)
//	--table    the key table (default idempotency_keys)
//	--batch    rows per prune batch (default 5000)
//	--pause    pause between prune batches, so live calls keep their latency (default 50ms)
//	--timeout  how long to wait for the database to answer a ping (default 5s)
//	--progress print a line per prune batch even when stderr is not a terminal
//
// The driver is inferred from the DSN: postgres:// and postgresql:// (and
// key=value strings with host=) are pgx; file:, :memory: and names ending
// in .db, .sqlite or .sqlite3 are SQLite; user@tcp(host)/db is MySQL.
//
// Exit status: 0 on success, 1 when the work failed (the database could
// not be reached, the table is missing, a statement failed), 2 for a usage
// error (unknown command or flag, no DSN, a DSN that cannot be parsed).
//
// Install: go install github.com/exactlyonce/idempotency/cmd/idempotency@latest
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql" // registers "mysql"
	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx" and "pgx/v5"
	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"    // registers "postgres"
	_ "modernc.org/sqlite" // registers "sqlite"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/migrations"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runContext(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

const usage = `usage: idempotency [flags] <command>

commands:
  migrate          apply pending migrations of the key table
  migrate status   list the migrations and whether each is applied
  prune            delete expired keys once, in batches
  stats            count keys by age, the expired backlog and the total, and flows running and stopped

flags (before or after the command):
`

// run is the command without the process around it: it parses args, does
// the work, writes to stdout and stderr and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdout, stderr)
}

// options are the parsed flags.
type options struct {
	dsn, driver, table string
	batch              int
	pause, timeout     time.Duration
	progress           bool
}

// usageError is a mistake in the command line: exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{msg: fmt.Sprintf(format, args...)}
}

func runContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("idempotency", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.dsn, "dsn", os.Getenv("IDEMPOTENCY_DSN"), "database DSN (default $IDEMPOTENCY_DSN)")
	fs.StringVar(&o.driver, "driver", "", "database/sql driver: pgx, postgres, mysql or sqlite (default: inferred from the DSN)")
	fs.StringVar(&o.table, "table", dialects.DefaultTable, "key table, optionally schema-qualified")
	fs.IntVar(&o.batch, "batch", 5000, "rows deleted per prune batch")
	fs.DurationVar(&o.pause, "pause", 50*time.Millisecond, "pause between prune batches (0: none); deleting a backlog without one doubled live calls' p99 latency")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "how long to wait for the database to answer a ping")
	fs.BoolVar(&o.progress, "progress", false, "print a line per prune batch even when stderr is not a terminal")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}

	// Flags may come before and after the command words: parse, take the
	// words, and parse what follows them again.
	var words []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage // the flag package has said what was wrong
		}
		if fs.NArg() == 0 {
			break
		}
		words = append(words, fs.Arg(0))
		rest = fs.Args()[1:]
	}

	err := dispatch(ctx, words, o, stdout, stderr)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "idempotency:", err)
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "run 'idempotency -h' for usage")
		return exitUsage
	}
	return exitFailure
}

func dispatch(ctx context.Context, words []string, o options, stdout, stderr io.Writer) error {
	cmd := strings.Join(words, " ")
	switch cmd {
	case "migrate", "migrate status", "prune", "stats":
	case "":
		return usagef("no command: want migrate, migrate status, prune or stats")
	default:
		return usagef("unknown command %q: want migrate, migrate status, prune or stats", cmd)
	}
	if o.batch < 1 || o.batch > 1_000_000 {
		return usagef("--batch %d: want 1 to 1000000", o.batch)
	}
	if o.pause < 0 {
		return usagef("--pause %v: must not be negative", o.pause)
	}
	if o.timeout <= 0 {
		return usagef("--timeout %v: want a positive duration", o.timeout)
	}
	db, schema, err := open(ctx, o)
	if err != nil {
		return err
	}
	defer db.Close()

	switch cmd {
	case "migrate", "migrate status":
		if o.table != dialects.DefaultTable {
			return usagef("--table %s: the migrations create only %s; create other tables yourself (see the migrations package)", o.table, dialects.DefaultTable)
		}
		if cmd == "migrate" {
			return migrate(ctx, db, stdout)
		}
		return migrateStatus(ctx, db, stdout)
	}

	progress := &pruneProgress{out: stderr, show: o.progress || isTerminal(stderr)}
	store, err := idempotency.New(db, idempotency.WithTable(o.table), idempotency.WithPruneBatch(o.batch),
		idempotency.WithPrunePause(o.pause), idempotency.WithHooks(progress.hooks()))
	if err != nil {
		return usageError{msg: strings.TrimPrefix(err.Error(), "idempotency: ")}
	}
	if err := checkTable(ctx, db, schema, o.table); err != nil {
		return err
	}
	if cmd == "prune" {
		return prune(ctx, store, progress, o.table, stdout)
	}
	return stats(ctx, db, schema, o.table, stdout)
}

// inferDriver tells the driver from the DSN's shape.
func inferDriver(dsn string) (string, error) {
	lower := strings.ToLower(dsn)
	switch {
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"),
		strings.Contains(lower, "host=") && !strings.Contains(lower, "@tcp("):
		return "pgx", nil
	case strings.HasPrefix(lower, "file:"), lower == ":memory:",
		strings.HasSuffix(lower, ".db"), strings.HasSuffix(lower, ".sqlite"), strings.HasSuffix(lower, ".sqlite3"):
		return "sqlite", nil
	case strings.Contains(lower, "@tcp("), strings.Contains(lower, "@unix("), strings.HasPrefix(lower, "tcp("):
		return "mysql", nil
	}
	return "", usagef("cannot tell the database from the DSN's shape: pass --driver pgx, postgres, mysql or sqlite")
}

// drivers are the database/sql drivers the command links, each with its
// own DSN parser, so that a typo is a clear usage error rather than a
// connection failure. The dialect of each comes from dialects.Open.
var drivers = map[string]func(dsn string) error{
	"pgx":      parsePgx,
	"pgx/v5":   parsePgx,
	"postgres": func(dsn string) error { _, err := pq.NewConnector(dsn); return err },
	"mysql":    func(dsn string) error { _, err := mysqldriver.ParseDSN(dsn); return err },
	"sqlite":   func(string) error { return nil }, // any name is a file
}

func parsePgx(dsn string) error { _, err := pgx.ParseConfig(dsn); return err }

// redact keeps a password in the DSN out of messages.
func redact(msg, dsn string) string {
	if dsn == "" {
		return msg
	}
	return strings.ReplaceAll(msg, dsn, "<dsn>")
}

// open connects and pings within the timeout, and finds the dialect's
// schema.
func open(ctx context.Context, o options) (*sqlx.DB, dialects.Schema, error) {
	if o.dsn == "" {
		return nil, nil, usagef("no database: pass --dsn or set IDEMPOTENCY_DSN")
	}
	driver := o.driver
	if driver == "" {
		var err error
		if driver, err = inferDriver(o.dsn); err != nil {
			return nil, nil, err
		}
	}
	parse, ok := drivers[driver]
	if !ok {
		return nil, nil, usagef("--driver %q: want one of %s", driver, strings.Join(slices.Sorted(maps.Keys(drivers)), ", "))
	}
	// Only the dialect's Schema is needed here, which is the same for
	// every table; --table is checked by idempotency.New.
	d, err := dialects.Open(driver, dialects.DefaultTable)
	if err != nil {
		return nil, nil, err
	}
	schema, ok := d.(dialects.Schema)
	if !ok {
		return nil, nil, fmt.Errorf("the %s dialect has no schema to work on", d.Name())
	}
	if err := parse(o.dsn); err != nil {
		return nil, nil, usagef("the DSN is not valid for driver %s: %v", driver, redact(err.Error(), o.dsn))
	}
	db, err := sqlx.Open(driver, o.dsn)
	if err != nil {
		return nil, nil, usagef("the DSN is not valid for driver %s: %v", driver, redact(err.Error(), o.dsn))
	}
	pctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		if pctx.Err() != nil && ctx.Err() == nil {
			return nil, nil, fmt.Errorf("cannot reach the database (%s) within %v: check the DSN's host and port and that the server is running", driver, o.timeout)
		}
		return nil, nil, fmt.Errorf("cannot reach the database (%s); check the DSN's host, port and credentials and that the server is running: %s", driver, redact(err.Error(), o.dsn))
	}
	return db, schema, nil
}

// checkTable makes a missing key table an error that says what to do.
func checkTable(ctx context.Context, db *sqlx.DB, schema dialects.Schema, table string) error {
	rows, err := db.QueryContext(ctx, `SELECT 1 FROM `+table+` WHERE 1 = 0`)
	if err == nil {
		return rows.Close()
	}
	if schema.MissingTable(err) {
		return fmt.Errorf("table %s does not exist in this database: run 'idempotency migrate' first (or pass --table)", table)
	}
	return fmt.Errorf("read table %s: %w", table, err)
}

func migrate(ctx context.Context, db *sqlx.DB, stdout io.Writer) error {
	p, err := migrations.Provider(db)
	if err != nil {
		return err
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if len(results) == 0 {
		fmt.Fprintln(stdout, "migrate: up to date, nothing to apply")
		return nil
	}
	for _, r := range results {
		fmt.Fprintf(stdout, "applied %s (%v)\n", r.Source.Path, r.Duration.Round(time.Millisecond))
	}
	fmt.Fprintf(stdout, "migrate: applied %d migration(s)\n", len(results))
	return nil
}

func migrateStatus(ctx context.Context, db *sqlx.DB, stdout io.Writer) error {
	st, err := migrations.Status(ctx, db)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tAPPLIED AT\tFILE")
	pending := 0
	for _, m := range st {
		at := "-"
		if !m.AppliedAt.IsZero() {
			at = m.AppliedAt.UTC().Format(time.RFC3339)
		} else {
			pending++
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", m.Source.Version, m.State, at, m.Source.Path)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d migration(s), %d pending\n", len(st), pending)
	return nil
}

// pruneProgress prints each batch of a prune (when show) and counts them.
type pruneProgress struct {
	out     io.Writer
	show    bool
	batches int
}

func (p *pruneProgress) hooks() idempotency.Hooks {
	return idempotency.Hooks{
		PruneBatch: func(_ context.Context, e idempotency.PruneBatchEvent) {
			if p.show {
				fmt.Fprintf(p.out, "batch %d: deleted %d rows in %v (total %d)\n", e.Batch, e.Rows, e.Duration.Round(time.Millisecond), e.Total)
			}
		},
		Pruned: func(_ context.Context, e idempotency.PruneEvent) { p.batches = e.Batches },
	}
}

// prune deletes expired keys through the store, which pauses between
// batches (--pause); progress prints each batch.
func prune(ctx context.Context, s *idempotency.Store, progress *pruneProgress, table string, stdout io.Writer) error {
	start := time.Now()
	total, err := s.Prune(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pruned %d expired keys from %s in %d batch(es), %v\n", total, table, progress.batches, time.Since(start).Round(time.Millisecond))
	return nil
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// ageBuckets are the upper bounds of the age buckets stats prints.
var ageBuckets = []struct {
	label string
	upTo  int64 // seconds; 0 = no bound
}{
	{"< 1h", 3600}, {"1h - 24h", 86400}, {"1d - 7d", 7 * 86400}, {">= 7d", 0},
}

// Stats are the counts stats prints.
type Stats struct {
	Total, Expired int64
	ByAge          []int64 // one per ageBuckets
}

// collectStats counts in one statement, by the database's clock (the
// app's plays no part).
func collectStats(ctx context.Context, db *sqlx.DB, schema dialects.Schema, table string) (Stats, error) {
	age, expired := schema.AgeSQL()
	cols := []string{"COUNT(*)", "COALESCE(SUM(CASE WHEN " + expired + " THEN 1 ELSE 0 END), 0)"}
	lower := int64(-1 << 62)
	for _, b := range ageBuckets {
		cond := fmt.Sprintf("%s >= %d", age, lower)
		if b.upTo != 0 {
			cond += fmt.Sprintf(" AND %s < %d", age, b.upTo)
		}
		cols = append(cols, "COALESCE(SUM(CASE WHEN "+cond+" THEN 1 ELSE 0 END), 0)")
		lower = b.upTo
	}
	st := Stats{ByAge: make([]int64, len(ageBuckets))}
	dest := []any{&st.Total, &st.Expired}
	for i := range st.ByAge {
		dest = append(dest, &st.ByAge[i])
	}
	q := "SELECT " + strings.Join(cols, ", ") + " FROM " + table
	if err := db.QueryRowContext(ctx, q).Scan(dest...); err != nil {
		return st, fmt.Errorf("stats of %s: %w", table, err)
	}
	return st, nil
}

func stats(ctx context.Context, db *sqlx.DB, schema dialects.Schema, table string, stdout io.Writer) error {
	st, err := collectStats(ctx, db, schema, table)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "table\t%s\n", table)
	fmt.Fprintf(tw, "total\t%d\n", st.Total)
	fmt.Fprintf(tw, "live\t%d\n", st.Total-st.Expired)
	fmt.Fprintf(tw, "expired (prune backlog)\t%d\n", st.Expired)
	for i, b := range ageBuckets {
		fmt.Fprintf(tw, "age %s\t%d\n", b.label, st.ByAge[i])
	}
	if err := flowStats(ctx, db, schema, table, tw); err != nil {
		return err
	}
	return tw.Flush()
}

// flowStats prints how many flows run and how many wait for a retry or a
// completer, by the database's clock, in the flow tables of the key table
// (dialects.FlowTables); nothing where the dialect has no flows or the
// flow table does not exist.
func flowStats(ctx context.Context, db *sqlx.DB, schema dialects.Schema, table string, w io.Writer) error {
	d, err := dialects.Open(db.DriverName(), table)
	if err != nil {
		return nil
	}
	fd, ok := d.(dialects.FlowDialect)
	if !ok || fd.FlowStatements().Stats == "" {
		return nil
	}
	var total, due int64
	if err := db.QueryRowContext(ctx, fd.FlowStatements().Stats).Scan(&total, &due); err != nil {
		if schema.MissingTable(err) {
			return nil
		}
		return fmt.Errorf("stats of flows: %w", err)
	}
	fmt.Fprintf(w, "flows running\t%d\n", total-due)
	fmt.Fprintf(w, "flows stopped or abandoned (lease over)\t%d\n", due)
	return nil
}
