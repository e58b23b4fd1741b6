// Command idempotency-bench measures what exactly-once costs: it compares
// idempotency.Do with the bare transaction a caller would commit anyway,
// per database, driver setting and concurrency, and prints markdown tables
// for the README.
//
// In each round, for each backend and concurrency, it runs these workloads
// one after another, in an order that rotates from round to round, and
// reports the median of the rounds:
//
//   - bare tx: BEGIN; INSERT a business row; COMMIT. The baseline.
//   - floor: the bare transaction plus one INSERT of the key with its value:
//     the physical lower bound of any protocol that stores the key in the
//     same transaction (it has no claim, so it is not one).
//   - floor + empty trip: the floor with one more statement that does
//     nothing (DO 1, SELECT 1): what a protocol that needs one round trip
//     more than the floor cannot beat (a claim before fn, through
//     database/sql).
//   - fresh Do: idempotency.Do with a new key; fn inserts the business row.
//   - fresh Do (ReadFirst): the same through a store with WithReadFirst, which
//     reads the key before any transaction: what that costs fresh calls.
//   - replay Do: idempotency.Do with a key that already committed.
//   - replay Do (ReadFirst): the same replay answered by that one read.
//   - replay Do (1 in 10): replays among fresh calls, nine to one, with the
//     default store, as retries arrive in ordinary traffic; only the
//     replays are timed.
//
// Then a duplicate storm: -storm calls on one key at once, fn inserting a
// row and taking about as long as a bare transaction. It reports the
// winner's latency and the losers'.
//
// Once per backend it counts round trips per call at the wire (a TCP proxy
// counts each time the server answers after the client spoke), and on every
// backend it reports heap allocations per call at concurrency 1, and CPU
// time per call: the bench's own, and a local MariaDB's (from /proc).
//
// Usage:
//
//	export IDEMPOTENCY_POSTGRES_DSN='postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
//	export IDEMPOTENCY_MYSQL_DSN='root@tcp(127.0.0.1:3306)/test'
//	export IDEMPOTENCY_TIDB_DSN='root@tcp(127.0.0.1:4000)/test'
//	go run ./cmd/idempotency-bench -backends sqlite,pgx,postgres,mysql -concurrency 1,16,64 -ops 2000 -rounds 3 -storm 200
//
// -concurrency takes numbers for every backend, and backend=number for one
// (issue 13's run: -concurrency sqlite=1,mysql+interpolateParams=16).
//
// Each backend gets its own Postgres, MySQL or TiDB database, or SQLite
// file, migrated with migrations.Up and dropped at the end. The tidb
// backend runs TiDB in its default pessimistic mode, tidb-optimistic with
// tidb_txn_mode='optimistic' on every connection.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
)

func main() {
	var (
		backendsFlag = flag.String("backends", "sqlite,pgx,postgres,mysql", "backends: sqlite, pgx (stdlib), pgxstore (native pgx), postgres (lib/pq), mysql, tidb, tidb-optimistic")
		settings     = flag.String("settings", "both", "DSN settings for lib/pq, mysql and tidb: plain (driver defaults), recommended (binary_parameters=yes, interpolateParams=true) or both")
		concFlag     = flag.String("concurrency", "1,16,64", "concurrent callers: numbers for every backend, or backend=number for one (sqlite=1,mysql+interpolateParams=16)")
		ops          = flag.Int("ops", 2000, "calls per workload, round and concurrency")
		rounds       = flag.Int("rounds", 3, "rounds; medians are reported")
		stormN       = flag.Int("storm", 200, "calls in the duplicate storm (0: none)")
		stormConns   = flag.Int("storm-conns", 32, "connection pool size during the storm")
		trips        = flag.Bool("trips", true, "count round trips per call through a TCP proxy")
		workloadFlag = flag.String("workloads", strings.Join(workloads, ","), "workloads to run")
	)
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("idempotency-bench: ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	var bs []*backend
	for _, name := range strings.Split(*backendsFlag, ",") {
		vs, err := variants(strings.TrimSpace(name), *settings)
		if err != nil {
			log.Fatal(err)
		}
		for i := range vs {
			bs = append(bs, &vs[i])
		}
	}
	conc, err := concurrency(*concFlag, bs)
	if err != nil {
		log.Fatal(err)
	}
	var wl []string
	for _, w := range strings.Split(*workloadFlag, ",") {
		if !slices.Contains(workloads, w) {
			log.Fatalf("unknown workload %q: use %s", w, strings.Join(workloads, ", "))
		}
		wl = append(wl, w)
	}

	r := &runner{conc: conc, ops: *ops, rounds: *rounds, workloads: wl,
		stormN: *stormN, stormConns: *stormConns, out: os.Stdout}
	if err := r.run(ctx, bs, *trips); err != nil {
		log.Fatal(err)
	}
}

type runner struct {
	conc       map[string][]int // by backend name
	ops        int
	rounds     int
	workloads  []string
	stormN     int
	stormConns int
	out        io.Writer

	samples map[string][]sample // backend|c|workload -> one per round
	storms  map[string][]stormSample
	trips   map[string]map[string]float64
	errors  []string
}

func id(b string, c int, w string) string { return b + "|" + strconv.Itoa(c) + "|" + w }

func (r *runner) run(ctx context.Context, bs []*backend, countTrips bool) error {
	r.samples = map[string][]sample{}
	r.storms = map[string][]stormSample{}
	r.trips = map[string]map[string]float64{}
	tmp, err := os.MkdirTemp("", "idempotency-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	var benches []*bench
	defer func() {
		for _, w := range benches {
			w.c.close()
			w.b.cleanup()
		}
	}()
	for _, b := range bs {
		if err := b.setup(ctx, tmp); err != nil {
			if b.cleanup != nil {
				b.cleanup()
			}
			return err
		}
		c, err := open(b, b.dsn)
		if err != nil {
			b.cleanup()
			return err
		}
		w, err := newBench(b, c)
		if err != nil {
			c.close()
			b.cleanup()
			return err
		}
		benches = append(benches, w)
		if err := w.seed(ctx, min(r.ops, 1000)); err != nil {
			return fmt.Errorf("%s: seed: %w", b.name, err)
		}
		if countTrips && b.kind != "sqlite" {
			t, err := r.countTrips(ctx, w)
			if err != nil {
				return fmt.Errorf("%s: count round trips: %w", b.name, err)
			}
			r.trips[b.name] = t
		}
	}

	fmt.Fprintf(r.out, "<!-- idempotency-bench %s -->\n", strings.Join(os.Args[1:], " "))
	for round := range r.rounds {
		fmt.Fprintf(os.Stderr, "round %d/%d\n", round+1, r.rounds)
		for _, w := range benches {
			for _, c := range r.conc[w.b.name] {
				// A failed block (the server out of connections while other
				// work shares it) leaves a gap in the tables, not a dead run.
				if err := r.block(ctx, w, c, round); err != nil {
					r.errors = append(r.errors, fmt.Sprintf("round %d %s c=%d: %v", round+1, w.b.name, c, err))
					log.Printf("%s c=%d: %v", w.b.name, c, err)
				}
			}
			if r.stormN > 0 {
				if err := r.storm(ctx, w); err != nil {
					return fmt.Errorf("%s storm: %w", w.b.name, err)
				}
			}
		}
	}
	r.print(benches)
	r.printErrors()
	return nil
}

// block runs every workload once at concurrency c, in rotated order.
func (r *runner) block(ctx context.Context, w *bench, c, round int) error {
	w.c.conns(c)
	// Give the connections back: other backends on the same server run next.
	defer w.c.conns(1)
	// Warm the pool and the drivers' statement caches.
	for _, name := range r.workloads {
		if _, err := phase(ctx, c, max(2*c, r.ops/20), w.op(name), nil); err != nil {
			return fmt.Errorf("warm-up %s: %w", name, err)
		}
	}
	order := slices.Clone(r.workloads)
	k := round % len(order)
	order = append(order[k:], order[:k]...)
	for _, name := range order {
		s, err := phase(ctx, c, r.ops, w.op(name), w.b.serverCPU)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		key := id(w.b.name, c, name)
		r.samples[key] = append(r.samples[key], s)
		fmt.Fprintf(os.Stderr, "  %-28s c=%-3d %-18s %8.0f ops/s p50 %-10v p99 %v\n", w.b.name, c, name, s.opsPerSec, s.p50.Round(time.Microsecond), s.p99.Round(time.Microsecond))
	}
	return nil
}

// storm runs one duplicate storm on its own pool; fn takes as long as the
// bare transaction's median latency at concurrency 1 (or 2ms).
func (r *runner) storm(ctx context.Context, w *bench) error {
	work := 2 * time.Millisecond
	if ss := r.samples[id(w.b.name, r.conc[w.b.name][0], wBare)]; len(ss) > 0 {
		work = ss[len(ss)-1].p50
	}
	c, err := open(w.b, w.b.dsn, idempotency.WithWait(60*time.Second))
	if err != nil {
		return err
	}
	defer c.close()
	c.conns(r.stormConns)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res := storm(sctx, w, c, r.stormN, work)
	// Exactly once, checked where it matters: one business row for the key.
	if res.rows, err = c.rows(ctx, res.key); err != nil {
		return err
	}
	r.storms[w.b.name] = append(r.storms[w.b.name], res)
	fmt.Fprintf(os.Stderr, "  %-28s storm n=%d work=%v: winner %v losers p50 %v p99 %v max %v fn runs %d errors %d %v\n",
		w.b.name, r.stormN, work.Round(time.Microsecond), res.winner.Round(time.Microsecond), res.p50.Round(time.Microsecond),
		res.p99.Round(time.Microsecond), res.max.Round(time.Microsecond), res.fnRuns, res.errs, res.firstErr)
	if res.rows != 1 || res.winners != 1 {
		r.errors = append(r.errors, fmt.Sprintf("%s storm: %d business rows and %d winners for one key, want 1", w.b.name, res.rows, res.winners))
	}
	return nil
}

// countTrips runs each workload 50 times on one connection through the
// counting proxy and returns round trips per call.
func (r *runner) countTrips(ctx context.Context, w *bench) (map[string]float64, error) {
	target, err := w.b.target()
	if err != nil {
		return nil, err
	}
	p, err := faultproxy.Start(target)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	dsn, err := w.b.withAddr(p.Addr())
	if err != nil {
		return nil, err
	}
	c, err := open(w.b, dsn)
	if err != nil {
		return nil, err
	}
	defer c.close()
	c.conns(1)
	pw, err := newBench(w.b, c)
	if err != nil {
		return nil, err
	}
	pw.replay, pw.flows = w.replay, w.flows
	const n = 50
	out := map[string]float64{}
	for _, name := range workloads {
		if name == wReplayMixed {
			continue // fresh calls and replays: their own columns say it
		}
		op := pw.op(name)
		for i := range 5 { // connect, detect, fill statement caches
			if err := op(ctx, i); err != nil {
				return nil, err
			}
		}
		before := p.Trips()
		for i := range n {
			if err := op(ctx, i); err != nil {
				return nil, err
			}
		}
		out[name] = float64(p.Trips()-before) / n
	}
	return out, nil
}

// concurrency reads -concurrency: numbers for every backend, and
// backend=number for one backend, which replace the others for it.
func concurrency(s string, bs []*backend) (map[string][]int, error) {
	var all []int
	one := map[string][]int{}
	for _, f := range strings.Split(s, ",") {
		name, num, named := strings.Cut(strings.TrimSpace(f), "=")
		if !named {
			num = name
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad number %q in -concurrency %q", f, s)
		}
		if !named {
			all = append(all, n)
			continue
		}
		if !slices.ContainsFunc(bs, func(b *backend) bool { return b.name == name }) {
			return nil, fmt.Errorf("-concurrency %q names %q, which is not a backend of this run", s, name)
		}
		one[name] = append(one[name], n)
	}
	out := map[string][]int{}
	for _, b := range bs {
		out[b.name] = all
		if c, ok := one[b.name]; ok {
			out[b.name] = c
		}
		if len(out[b.name]) == 0 {
			return nil, fmt.Errorf("-concurrency %q gives %s no concurrency", s, b.name)
		}
	}
	return out, nil
}
