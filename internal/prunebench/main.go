// Command prunebench measures what a running pruner costs live traffic.
//
// It creates a scratch database (Postgres, MySQL, MariaDB),
// bulk-loads a backlog of expired keys with one SQL statement per chunk,
// then runs a concurrent load of idempotency.Do calls (each inserting a
// business row) twice for the same duration: first without a pruner, then
// with RunPruner deleting the backlog. It prints the load's p50 and p99
// latency in both phases and their ratio, the rows pruned, and checks that
// every key the load committed is still there and replays.
//
//	go run ./internal/prunebench -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
//	go run ./internal/prunebench -dsn 'root@tcp(127.0.0.1:3306)/test' -rows 1000000
//
// The scratch database is dropped at the end unless -keep is set.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/go-sql-driver/mysql" // mysql
	_ "github.com/jackc/pgx/v5/stdlib" // pgx
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // postgres

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
	"github.com/exactlyonce/idempotency/migrations"
)

type config struct {
	dsn, driver      string
	rows, workers    int
	duration, warmup time.Duration
	interval, pause  time.Duration
	batch, chunk     int
	keep             bool
	kind             string
}

func main() {
	var c config
	flag.StringVar(&c.dsn, "dsn", os.Getenv("IDEMPOTENCY_DSN"), "server DSN (Postgres URL or MySQL user@tcp(host)/db); default $IDEMPOTENCY_DSN")
	flag.StringVar(&c.driver, "driver", "", "pgx, postgres or mysql (default: from the DSN)")
	flag.IntVar(&c.rows, "rows", 1_000_000, "expired keys to load before the load starts")
	flag.IntVar(&c.workers, "workers", 16, "concurrent callers of Do")
	flag.DurationVar(&c.duration, "duration", 15*time.Second, "length of each phase")
	flag.DurationVar(&c.warmup, "warmup", 2*time.Second, "load before measuring")
	flag.DurationVar(&c.interval, "interval", 200*time.Millisecond, "the pruner's interval (WithPruneInterval)")
	flag.DurationVar(&c.pause, "pause", 0, "the pruner's pause between batches (WithPrunePause)")
	flag.IntVar(&c.batch, "batch", 5000, "rows per prune batch (WithPruneBatch)")
	flag.IntVar(&c.chunk, "chunk", 100_000, "rows per bulk INSERT")
	flag.BoolVar(&c.keep, "keep", false, "keep the scratch database")
	flag.Parse()
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintln(os.Stderr, "prunebench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	if c.dsn == "" {
		return errors.New("pass -dsn (a Postgres or MySQL/MariaDB server)")
	}
	if c.driver == "" {
		c.driver = "pgx"
		if strings.Contains(c.dsn, "@tcp(") || strings.Contains(c.dsn, "@unix(") {
			c.driver = "mysql"
		}
	}
	d, err := dialects.Open(c.driver, dialects.DefaultTable)
	if err != nil {
		return fmt.Errorf("-driver %q: %w", c.driver, err)
	}
	c.kind = d.Name()
	if c.kind == "sqlite" {
		return fmt.Errorf("-driver %q: prunebench measures a server under load; want pgx, postgres or mysql", c.driver)
	}
	sc, err := scratch.New(ctx, c.kind, c.dsn, "prunebench_")
	if err != nil {
		return err
	}
	if !c.keep {
		defer func() {
			if err := sc.Drop(context.Background()); err != nil {
				fmt.Fprintf(os.Stderr, "prunebench: drop %s: %v\n", sc.Name, err)
			}
		}()
	} else {
		fmt.Printf("keeping %s\n", sc.Name)
	}
	db, err := sqlx.Open(c.driver, sc.DSN)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(c.workers + 8)
	db.SetMaxIdleConns(c.workers + 8)
	if err := migrations.Up(ctx, db); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE bench_orders (k VARCHAR(255) NOT NULL, amount INTEGER NOT NULL)`); err != nil {
		return err
	}

	fmt.Printf("%s (%s): loading %d expired keys ... ", c.kind, c.driver, c.rows)
	began := time.Now()
	if err := load(ctx, db, c); err != nil {
		return err
	}
	backlog, err := count(ctx, db, "scope = 'bench-expired'")
	if err != nil {
		return err
	}
	fmt.Printf("%d in %v\n", backlog, time.Since(began).Round(time.Millisecond))

	store, err := idempotency.New(db)
	if err != nil {
		return err
	}
	live := store.Scope("bench-live")
	var committed sync.Map // key -> amount

	fmt.Printf("load: %d workers, warm-up %v, then %v per phase; pruner every %v, batch %d, pause %v\n",
		c.workers, c.warmup, c.duration, c.interval, c.batch, c.pause)
	if _, err := phase(ctx, live, c, "warm", c.warmup, &committed); err != nil {
		return err
	}
	without, err := phase(ctx, live, c, "a", c.duration, &committed)
	if err != nil {
		return err
	}

	// Phase B: the same load with a pruner deleting the backlog.
	var pruned atomic.Int64
	var drainedAt atomic.Int64 // unix nanos when a run first found nothing left
	prunerStore, err := idempotency.New(db, idempotency.WithPruneBatch(c.batch), idempotency.WithHooks(idempotency.Hooks{
		Pruned: func(_ context.Context, e idempotency.PruneEvent) {
			pruned.Add(e.Rows)
			if e.Err == nil && pruned.Load() >= int64(backlog) {
				drainedAt.CompareAndSwap(0, time.Now().UnixNano())
			}
		},
	}))
	if err != nil {
		return err
	}
	pctx, stopPruner := context.WithCancel(ctx)
	prunerDone := make(chan error, 1)
	phaseB := time.Now()
	go func() {
		prunerDone <- prunerStore.RunPruner(pctx, idempotency.WithPruneInterval(c.interval), idempotency.WithPruneJitter(0.2), idempotency.WithPrunePause(c.pause), idempotency.WithPruneAtStart())
	}()
	with, err := phase(ctx, live, c, "b", c.duration, &committed)
	stopPruner()
	if perr := <-prunerDone; err == nil {
		err = perr
	}
	if err != nil {
		return err
	}

	a, bb := summarize(without.lat), summarize(with.lat)
	fmt.Println()
	fmt.Printf("%-24s %8s %10s %10s %10s %9s\n", "phase", "calls", "calls/s", "p50", "p99", "errors")
	row := func(name string, s stats, p phaseResult, d time.Duration) {
		fmt.Printf("%-24s %8d %10.0f %10v %10v %9d\n", name, s.n, float64(s.n)/d.Seconds(), s.p50, s.p99, p.errors)
	}
	row("without pruner", a, without, c.duration)
	row("with pruner", bb, with, c.duration)
	if d := drainedAt.Load(); d != 0 {
		drain := time.Unix(0, d).Sub(phaseB)
		fmt.Printf("backlog drained after %v of phase b\n", drain.Round(time.Millisecond))
		if drain < c.duration {
			// The calls that ran while the pruner was still deleting.
			var during []time.Duration
			for i, at := range with.start {
				if at.Sub(phaseB) < drain {
					during = append(during, with.lat[i])
				}
			}
			s := summarize(during)
			fmt.Printf("%-24s %8d %10.0f %10v %10v\n", "while pruner deleting", s.n, float64(s.n)/drain.Seconds(), s.p50, s.p99)
			fmt.Printf("ratio while deleting: p50 x%.2f, p99 x%.2f\n", ratio(s.p50, a.p50), ratio(s.p99, a.p99))
		}
	} else {
		fmt.Println("backlog not drained within phase b")
	}
	fmt.Printf("ratio with/without pruner: p50 x%.2f, p99 x%.2f\n", ratio(bb.p50, a.p50), ratio(bb.p99, a.p99))

	left, err := count(ctx, db, "scope = 'bench-expired'")
	if err != nil {
		return err
	}
	fmt.Printf("pruned %d of %d expired keys (%d left)\n", pruned.Load(), backlog, left)
	return verify(ctx, db, live, &committed, c.workers)
}

type phaseResult struct {
	lat    []time.Duration
	start  []time.Time
	errors int64
}

// phase runs the load for d and returns every call's latency.
func phase(ctx context.Context, s *idempotency.Store, c config, name string, d time.Duration, committed *sync.Map) (phaseResult, error) {
	deadline := time.Now().Add(d)
	results := make([]phaseResult, c.workers)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for w := range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[w]
			for i := 0; time.Now().Before(deadline); i++ {
				key := fmt.Sprintf("%s-%d-%d", name, w, i)
				amount := i % 1000
				began := time.Now()
				_, err := idempotency.Do(ctx, s, key, amount, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
					_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO bench_orders (k, amount) VALUES (?, ?)`), key, amount)
					return amount, err
				})
				r.lat = append(r.lat, time.Since(began))
				r.start = append(r.start, began)
				if err != nil {
					r.errors++
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				committed.Store(key, amount)
			}
		}()
	}
	wg.Wait()
	var all phaseResult
	for _, r := range results {
		all.lat = append(all.lat, r.lat...)
		all.start = append(all.start, r.start...)
		all.errors += r.errors
	}
	if e := firstErr.Load(); e != nil {
		fmt.Printf("phase %s: %d calls failed, first: %v\n", name, all.errors, e)
	}
	return all, nil
}

type stats struct {
	n        int
	p50, p99 time.Duration
}

func summarize(lat []time.Duration) stats {
	if len(lat) == 0 {
		return stats{}
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))].Round(time.Microsecond) }
	return stats{n: len(s), p50: at(0.50), p99: at(0.99)}
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// verify checks that every committed key is still stored, replays without
// running fn, and has exactly one business row.
func verify(ctx context.Context, db *sqlx.DB, s *idempotency.Store, committed *sync.Map, workers int) error {
	type kv struct {
		key    string
		amount int
	}
	var keys []kv
	committed.Range(func(k, v any) bool {
		keys = append(keys, kv{k.(string), v.(int)})
		return true
	})
	stored, err := count(ctx, db, "scope = 'bench-live'")
	if err != nil {
		return err
	}
	var orders int
	if err := db.GetContext(ctx, &orders, `SELECT COUNT(*) FROM bench_orders`); err != nil {
		return err
	}
	var missing, bad atomic.Int64
	ch := make(chan kv)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range ch {
				ran := false
				r, err := idempotency.Run(ctx, s, k.key, k.amount, func(context.Context, *sqlx.Tx) (int, error) {
					// The key was gone: fail, so that nothing is stored.
					ran = true
					return -1, errors.New("fn ran for a committed key")
				})
				switch {
				case ran:
					missing.Add(1)
				case err != nil || !r.Replayed || r.Value != k.amount:
					bad.Add(1)
				}
			}
		}()
	}
	for _, k := range keys {
		ch <- k
	}
	close(ch)
	wg.Wait()
	fmt.Printf("live keys: %d committed by the load, %d stored, %d business rows; replayed %d, missing %d, wrong %d\n",
		len(keys), stored, orders, len(keys)-int(missing.Load()+bad.Load()), missing.Load(), bad.Load())
	if missing.Load() != 0 || bad.Load() != 0 || stored != len(keys) || orders != len(keys) {
		return errors.New("FAIL: a live key was lost or did not replay")
	}
	fmt.Println("OK: every committed key is intact and replays")
	return nil
}

func count(ctx context.Context, db *sqlx.DB, where string) (int, error) {
	var n int
	err := db.GetContext(ctx, &n, `SELECT COUNT(*) FROM idempotency_keys WHERE `+where)
	return n, err
}

// load bulk-inserts c.rows expired keys, chunk by chunk, with the database
// generating the rows: generate_series on Postgres, a cross join of digits
// on MySQL and MariaDB. They expired between one and two days ago.
func load(ctx context.Context, db *sqlx.DB, c config) error {
	for from := 0; from < c.rows; from += c.chunk {
		to := min(from+c.chunk, c.rows)
		var err error
		if c.kind == "postgres" {
			_, err = db.ExecContext(ctx, `INSERT INTO idempotency_keys (scope, key, fingerprint, value, failed, created_at, expires_at)
SELECT 'bench-expired', 'exp-' || g, sha256(g::text::bytea), '"v"'::bytea, false,
	now() - interval '2 days', now() - interval '1 day' - g * interval '50 millisecond'
FROM generate_series($1::int, $2::int - 1) AS g`, from, to)
		} else {
			_, err = db.ExecContext(ctx, `INSERT INTO idempotency_keys (scope, `+"`key`"+`, fingerprint, value, failed, created_at, expires_at)
SELECT 'bench-expired', CONCAT('exp-', n), UNHEX(SHA2(n, 256)), '"v"', FALSE,
	UTC_TIMESTAMP(6) - INTERVAL 2 DAY, UTC_TIMESTAMP(6) - INTERVAL 1 DAY - INTERVAL n * 50 MICROSECOND
FROM (SELECT ? + `+digitSum(to-from)+` AS n FROM `+digitJoin(to-from)+`) AS s
WHERE n < ?`, from, to)
		}
		if err != nil {
			return fmt.Errorf("bulk insert rows %d to %d: %w", from, to, err)
		}
	}
	stmt := `ANALYZE idempotency_keys`
	if c.kind == "mysql" {
		stmt = `ANALYZE TABLE idempotency_keys`
	}
	_, err := db.ExecContext(ctx, stmt)
	return err
}

// digitJoin cross-joins enough tables of the digits 0 to 9 (named d0, d1,
// ...) to number n rows; digitSum is the number of each row.
func digitJoin(n int) string {
	var parts []string
	for i := 0; i == 0 || pow10(i) < n; i++ {
		parts = append(parts, `(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
	UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) AS d`+fmt.Sprint(i))
	}
	return strings.Join(parts, " CROSS JOIN ")
}

func digitSum(n int) string {
	var parts []string
	for i := 0; i == 0 || pow10(i) < n; i++ {
		parts = append(parts, fmt.Sprintf("%d * d%d.d", pow10(i), i))
	}
	return strings.Join(parts, " + ")
}

func pow10(i int) int {
	p := 1
	for range i {
		p *= 10
	}
	return p
}
