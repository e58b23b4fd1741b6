// Package inboxfault runs the inbox adapters' fault tests: worker
// processes that consume a broker's messages through the inbox and die
// (SIGKILL) before COMMIT and between COMMIT and the ack, with their
// database and broker connections going through faultproxy, which cuts
// them at COMMIT and every so often. The parent restarts workers until the
// broker has nothing left to deliver; the test then checks, from the
// database alone, that every published id took effect exactly once.
//
// It knows no broker: each adapter's test re-runs its own test binary as
// a worker (Worker tells it that it is one) and says when the broker is
// drained.
package inboxfault

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// Config is what a worker does, passed to it in the environment.
type Config struct {
	DSN, BrokerURL string // the real servers; the worker proxies both
	Name           string // the stream or queue
	Dir            string // where workers write their events and the proxies' stats

	KillBeforeCommit float64       // per message, inside the handler
	KillAfterCommit  float64       // per message, after COMMIT, before the ack
	CutAtCommit      float64       // per COMMIT on the database connection
	CutBrokerEvery   time.Duration // how often the broker connection is cut at its next message
}

const envKey = "IDEMPOTENCY_INBOXFAULT_WORKER"

// Worker returns the configuration when this process is a worker.
func Worker() (Config, bool) {
	raw := os.Getenv(envKey)
	if raw == "" {
		return Config{}, false
	}
	var c Config
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		panic(fmt.Sprintf("inboxfault: bad worker configuration %q: %v", raw, err))
	}
	return c, true
}

// MaybeKill kills the process with SIGKILL with probability p, after
// noting point in the events file.
func (c Config) MaybeKill(p float64, point string) {
	if rand.Float64() >= p {
		return
	}
	c.note(point)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

func (c Config) note(event string) {
	f, err := os.OpenFile(filepath.Join(c.Dir, "events"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	_, _ = f.WriteString(event + "\n")
	_ = f.Close()
}

// Connect starts the worker's proxies (see proxies) and returns a store on
// the Postgres database through its proxy, and the address of the
// broker's proxy (host:port) to dial instead of BrokerURL's host.
func (c Config) Connect(ctx context.Context, t testing.TB) (store *idempotency.TxStore[pgx.Tx], brokerAddr string) {
	t.Helper()
	u, err := url.Parse(c.BrokerURL)
	if err != nil {
		t.Fatal(err)
	}
	dbTarget, err := scratch.Addr("postgres", c.DSN)
	if err != nil {
		t.Fatal(err)
	}
	dbAddr, brokerAddr, err := c.proxies(ctx, dbTarget, u.Host)
	if err != nil {
		t.Fatal(err)
	}
	dsn, err := scratch.Rehost("postgres", c.DSN, dbAddr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	// Statements described by their text, so that the proxy sees COMMIT.
	pc.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	store, err = pgxstore.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	return store, brokerAddr
}

// proxies starts the worker's proxies to the database and the broker,
// with the configured chaos, and writes their stats to the worker's file
// every 100ms until ctx ends.
func (c Config) proxies(ctx context.Context, db, broker string) (dbAddr, brokerAddr string, err error) {
	pdb, err := faultproxy.Start(db)
	if err != nil {
		return "", "", err
	}
	pdb.SetChaos(&faultproxy.Chaos{CommitProb: c.CutAtCommit})
	pb, err := faultproxy.Start(broker)
	if err != nil {
		return "", "", err
	}
	if c.CutBrokerEvery > 0 {
		go func() {
			// At the next message either side sends, once forwarded
			// (an ack may reach the server, its answer not the client)
			// and once not.
			for i := 0; ctx.Err() == nil; i++ {
				time.Sleep(c.CutBrokerEvery/2 + rand.N(c.CutBrokerEvery))
				pb.Arm([]faultproxy.Mode{faultproxy.CutAfterNext, faultproxy.CutBeforeNext}[i%2])
			}
		}()
	}
	path := filepath.Join(c.Dir, fmt.Sprintf("stats.%d", os.Getpid()))
	go func() {
		for ctx.Err() == nil {
			s := pdb.Stats()
			line := fmt.Sprintf("%d %d %d\n", s.CommitCutsBefore, s.CommitCutsAfter, pb.Cuts())
			_ = os.WriteFile(path+".tmp", []byte(line), 0o644)
			_ = os.Rename(path+".tmp", path)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return pdb.Addr(), pb.Addr(), nil
}

// Report counts what happened in a run.
type Report struct {
	Workers          int // processes started
	KillsBefore      int // killed inside the handler, before COMMIT
	KillsAfter       int // killed after COMMIT, before the ack
	CommitCutsBefore int // database connections cut with COMMIT unsent
	CommitCutsAfter  int // database connections cut after COMMIT, the answer lost
	BrokerCuts       int // broker connections cut
}

func (r Report) String() string {
	return fmt.Sprintf("%d workers; SIGKILL %d before COMMIT, %d after COMMIT before the ack; database cut at COMMIT %d before and %d after it reached the server; broker connection cut %d times",
		r.Workers, r.KillsBefore, r.KillsAfter, r.CommitCutsBefore, r.CommitCutsAfter, r.BrokerCuts)
}

// Supervise keeps n workers running (the test binary again, running only
// the test named worker) until drained reports true, then kills them, and
// reports what happened. It fails t when the broker is not drained within
// limit.
func Supervise(t *testing.T, c Config, n int, worker string, limit time.Duration, drained func() bool) Report {
	t.Helper()
	raw, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	started := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				cmd := exec.Command(os.Args[0], "-test.run=^"+worker+"$", "-test.count=1")
				cmd.Env = append(os.Environ(), envKey+"="+string(raw))
				out, _ := os.Create(filepath.Join(c.Dir, fmt.Sprintf("worker.%d.log", time.Now().UnixNano())))
				cmd.Stdout, cmd.Stderr = out, out
				if err := cmd.Start(); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				started++
				mu.Unlock()
				exited := make(chan struct{})
				go func() { _ = cmd.Wait(); close(exited) }()
				select {
				case <-exited:
				case <-stop:
					_ = cmd.Process.Kill()
					<-exited
				}
				_ = out.Close()
			}
		})
	}
	deadline := time.Now().Add(limit)
	for !drained() {
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("the broker still had messages after %v; worker logs in %s", limit, c.Dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	r := Report{Workers: started}
	if f, err := os.Open(filepath.Join(c.Dir, "events")); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			switch s.Text() {
			case "before-commit":
				r.KillsBefore++
			case "after-commit":
				r.KillsAfter++
			}
		}
		_ = f.Close()
	}
	stats, _ := filepath.Glob(filepath.Join(c.Dir, "stats.*"))
	for _, path := range stats {
		if strings.HasSuffix(path, ".tmp") {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var before, after, cuts int
		if _, err := fmt.Sscan(string(b), &before, &after, &cuts); err == nil {
			r.CommitCutsBefore += before
			r.CommitCutsAfter += after
			r.BrokerCuts += cuts
		}
	}
	return r
}

// Check fails t unless every id in want took effect exactly once:
// effects maps an id to how many times it did.
func Check(t *testing.T, want []string, effects map[string]int) {
	t.Helper()
	missing, twice := 0, 0
	for _, id := range want {
		switch n := effects[id]; {
		case n == 0:
			missing++
			if missing <= 5 {
				t.Errorf("%s: never applied", id)
			}
		case n > 1:
			twice++
			if twice <= 5 {
				t.Errorf("%s: applied %d times", id, n)
			}
		}
	}
	if len(effects) != len(want) {
		t.Errorf("%d ids applied, %d published", len(effects), len(want))
	}
	if missing+twice > 0 {
		t.Fatalf("%d ids lost, %d applied more than once, of %d", missing, twice, len(want))
	}
}
