package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/internal/faultproxy"
)

// WorkerEnv is the environment variable that carries a WorkerConfig (JSON)
// to a worker process.
const WorkerEnv = "IDEMPOTENCY_CHAOS_WORKER"

// Plan is one chaos run against one database.
type Plan struct {
	Name    string
	Drivers []string // database/sql drivers (or PgxStore), one per worker in turn
	DSN     string   // direct DSN; the checker always uses it
	// PgBouncer: DSN reaches Postgres through PgBouncer in transaction
	// pooling, and each worker sends its statements in one exchange
	// each (scratch.BouncedDSN).
	PgBouncer  bool
	Isolations []string      // isolation levels, one per worker in turn ("" = default)
	Procs      int           // worker processes alive at once
	Goroutines int           // goroutines per worker
	Keys       int           // keys live at once: the window calls draw from
	KeyEvery   time.Duration // the window moves one key on this often (0: never)
	Duration   time.Duration
	Wait       time.Duration // WithWait of the workers
	Dir        string        // where the worker logs go
	Faults     Faults
	// Flows runs the flow workload beside Do's, and CheckFlows after.
	Flows bool

	// KillEvery is the mean time between SIGKILLs of a random worker.
	KillEvery time.Duration
	// Proxy is the chaos of the TCP proxy, when Faults.Proxy.
	Proxy *faultproxy.Chaos
	// ProxyDSN rewrites the DSN to go through the proxy at addr, and
	// returns the target host:port.
	ProxyDSN func(dsn, addr string) (string, string, error)
	// Restart restarts the database server, when Faults.Restart.
	Restart      func() error
	RestartEvery time.Duration

	// Command returns the command that runs one worker: a process that
	// calls RunWorker with the WorkerConfig it finds in WorkerEnv.
	Command func() *exec.Cmd
	// Logf reports progress (t.Logf); optional.
	Logf func(format string, args ...any)
}

// Figures are what a run did and found.
type Figures struct {
	Name        string
	Calls       int            // answers logged
	Duplicates  int            // calls of a key that had been called before
	Keys        int            // distinct keys called
	Classes     map[string]int // answers by class
	Replayed    int
	Unknown     int // ErrOutcomeUnknown answers
	UnknownDone int // of which the call's write had committed
	Processes   int // worker processes started
	Faults      map[string]int64
	Resolution  Resolution
	Errors      map[string]int // other errors (class error), by message shape
	Breaches    []string
	Flows       FlowFigures // the flow workload's
}

// String formats the figures on a few lines.
func (f *Figures) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: calls=%d duplicates=%d keys=%d replayed=%d processes=%d unknown=%d (committed %d) breaches=%d\n",
		f.Name, f.Calls, f.Duplicates, f.Keys, f.Replayed, f.Processes, f.Unknown, f.UnknownDone, len(f.Breaches))
	fmt.Fprintf(&b, "  answers: %s\n", formatCounts(f.Classes))
	fmt.Fprintf(&b, "  faults: %s\n", formatCounts(f.Faults))
	fmt.Fprintf(&b, "  final retry of %d keys: replayed=%d ran=%d final=%d stuck=%d",
		f.Resolution.Keys, f.Resolution.Replayed, f.Resolution.Ran, f.Resolution.Final, len(f.Resolution.Stuck))
	if f.Flows.Classes != nil {
		fmt.Fprintf(&b, "\n  %s", strings.ReplaceAll(f.Flows.String(), "\n", "\n  "))
	}
	for _, e := range topErrors(f.Errors, 4) {
		fmt.Fprintf(&b, "\n  error: %s", e)
	}
	for _, br := range f.Breaches {
		fmt.Fprintf(&b, "\n  BREACH: %s", br)
	}
	return b.String()
}

func formatCounts[N int | int64](m map[string]N) string {
	names := make([]string, 0, len(m))
	for k, v := range m {
		if v != 0 {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// Run runs the plan's workers with its faults, then checks the database.
// It returns an error when the run could not be carried out; breaches of
// the invariants are in Figures.Breaches.
func Run(ctx context.Context, p Plan) (*Figures, error) {
	logf := p.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	fig := &Figures{Name: p.Name, Classes: map[string]int{}, Faults: map[string]int64{}, Errors: map[string]int{}}
	var faultsMu sync.Mutex
	countFault := func(kind string) {
		faultsMu.Lock()
		fig.Faults[kind]++
		faultsMu.Unlock()
	}

	dsn := p.DSN
	var proxy *faultproxy.Proxy
	if p.Faults.Proxy {
		var (
			target string
			err    error
		)
		// The proxy address is known only once it listens; rewrite twice.
		if _, target, err = p.ProxyDSN(p.DSN, "127.0.0.1:1"); err != nil {
			return nil, err
		}
		if proxy, err = faultproxy.Start(target); err != nil {
			return nil, err
		}
		defer proxy.Close()
		if dsn, _, err = p.ProxyDSN(p.DSN, proxy.Addr()); err != nil {
			return nil, err
		}
		proxy.SetChaos(p.Proxy)
	}

	begin := time.Now()
	until := begin.Add(p.Duration)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()

	var (
		mu      sync.Mutex
		live    = map[int]*os.Process{}
		started atomic.Int64
		nextID  atomic.Int64
		spawnMu sync.Mutex
		failErr error
	)
	spawn := func(slot int) (*exec.Cmd, error) {
		id := int(nextID.Add(1))
		cfg := WorkerConfig{
			ID:         id,
			Driver:     p.Drivers[id%len(p.Drivers)],
			DSN:        dsn,
			Keys:       p.Keys,
			Start:      begin,
			KeyEvery:   p.KeyEvery,
			Goroutines: p.Goroutines,
			Until:      until,
			Log:        filepath.Join(p.Dir, fmt.Sprintf("worker-%03d.log", id)),
			Wait:       p.Wait,
			Faults:     p.Faults,
			Flows:      p.Flows,
			PgBouncer:  p.PgBouncer,
		}
		if len(p.Isolations) > 0 {
			cfg.Isolation = p.Isolations[id%len(p.Isolations)]
		}
		b, err := json.Marshal(cfg)
		if err != nil {
			return nil, err
		}
		cmd := p.Command()
		cmd.Env = append(os.Environ(), WorkerEnv+"="+string(b))
		cmd.Stdout = nil
		stderr, err := os.Create(filepath.Join(p.Dir, fmt.Sprintf("worker-%03d.stderr", id)))
		if err != nil {
			return nil, err
		}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			stderr.Close()
			return nil, err
		}
		stderr.Close()
		started.Add(1)
		mu.Lock()
		live[slot] = cmd.Process
		mu.Unlock()
		return cmd, nil
	}

	var wg sync.WaitGroup
	for slot := range p.Procs {
		wg.Go(func() {
			for time.Now().Before(until) && runCtx.Err() == nil {
				spawnMu.Lock()
				cmd, err := spawn(slot)
				spawnMu.Unlock()
				if err != nil {
					mu.Lock()
					failErr = errors.Join(failErr, err)
					mu.Unlock()
					stop()
					return
				}
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				var werr error
				select {
				case werr = <-done:
				case <-time.After(time.Until(until) + 45*time.Second):
					// A worker stuck past the run: kill it; the checker
					// will find whatever it left.
					_ = cmd.Process.Kill()
					werr = <-done
					countFault("worker_stuck_killed")
				}
				mu.Lock()
				delete(live, slot)
				mu.Unlock()
				var ee *exec.ExitError
				if errors.As(werr, &ee) {
					if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
						continue // killed on purpose: respawn
					}
					mu.Lock()
					failErr = errors.Join(failErr, fmt.Errorf("worker %d failed: %v (see %s)", slot, werr, p.Dir))
					mu.Unlock()
					return
				}
				if werr != nil {
					mu.Lock()
					failErr = errors.Join(failErr, werr)
					mu.Unlock()
					return
				}
			}
		})
	}

	var fwg sync.WaitGroup
	if p.Faults.Kill && p.KillEvery > 0 {
		fwg.Go(func() {
			for {
				d := p.KillEvery/2 + rand.N(p.KillEvery+1)
				if sleepCtx(runCtx, min(d, p.Duration/3)) != nil || !time.Now().Add(500*time.Millisecond).Before(until) {
					return
				}
				mu.Lock()
				var procs []*os.Process
				for _, pr := range live {
					procs = append(procs, pr)
				}
				mu.Unlock()
				if len(procs) == 0 {
					continue
				}
				if syscall.Kill(procs[rand.IntN(len(procs))].Pid, syscall.SIGKILL) == nil {
					countFault("kill_random")
				}
			}
		})
	}
	if p.Faults.Restart && p.Restart != nil && p.RestartEvery > 0 {
		fwg.Go(func() {
			for restarts := 0; ; restarts++ {
				// The first restart comes early, so that even a short run
				// has one; the next ones come every RestartEvery or so.
				d := p.Duration/5 + rand.N(p.Duration/4+1)
				if restarts > 0 {
					d = p.RestartEvery/2 + rand.N(p.RestartEvery+1)
				}
				if sleepCtx(runCtx, d) != nil || !time.Now().Add(time.Second).Before(until) {
					return
				}
				if err := p.Restart(); err != nil {
					mu.Lock()
					failErr = errors.Join(failErr, fmt.Errorf("restart the server: %w", err))
					mu.Unlock()
					stop()
					return
				}
				countFault("server_restart")
				logf("%s: server restarted", p.Name)
			}
		})
	}
	wg.Wait()
	stop()
	fwg.Wait()
	if failErr != nil {
		return nil, failErr
	}
	fig.Processes = int(started.Load())
	if proxy != nil {
		proxy.SetChaos(nil)
		s := proxy.Stats()
		fig.Faults["proxy_delay"] = s.Delays
		fig.Faults["proxy_drop"] = s.Drops
		fig.Faults["proxy_cut_mid_statement"] = s.CutsMid
		fig.Faults["proxy_cut_commit_after"] = s.CommitCutsAfter
		fig.Faults["proxy_cut_commit_before"] = s.CommitCutsBefore
	}

	answers, err := ReadLogs(p.Dir)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, a := range answers {
		if a.Fault != "" {
			fig.Faults[a.Fault]++
			continue
		}
		if a.Flow || a.FlowEvent != "" {
			continue // counted by CheckFlows
		}
		fig.Calls++
		fig.Classes[a.Class]++
		if a.Injected != "" {
			fig.Faults["call_"+a.Injected]++
		}
		if seen[a.Key] {
			fig.Duplicates++
		}
		seen[a.Key] = true
		if a.Replayed {
			fig.Replayed++
		}
		if a.Class == ClassError {
			fig.Errors[errorShape(a.Err)]++
		}
	}
	fig.Keys = len(seen)

	db, err := sqlx.Open(p.Drivers[0], p.DSN)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := waitReady(cctx, db); err != nil {
		return nil, err
	}
	st, err := ReadState(cctx, db)
	if err != nil {
		return nil, err
	}
	fig.Breaches = Check(st, answers)
	for _, a := range answers {
		if a.Class == ClassUnknown {
			fig.Unknown++
			if r, ok := st.Keys[a.Key]; ok && !r.failed && strings.Contains(string(r.value), `"`+a.Call+`"`) {
				fig.UnknownDone++
			}
		}
	}
	// No key is stuck: a retry of each now replays or runs.
	res, more, err := Resolve(cctx, db, Touched(st, answers), 10*time.Second)
	if err != nil {
		return nil, err
	}
	fig.Resolution = res
	fig.Breaches = append(fig.Breaches, res.Stuck...)
	st, err = ReadState(cctx, db)
	if err != nil {
		return nil, err
	}
	for _, b := range Check(st, append(answers, more...)) {
		if !contains(fig.Breaches, b) {
			fig.Breaches = append(fig.Breaches, "after the final retries: "+b)
		}
	}
	if !p.Flows {
		return fig, nil
	}
	flows, breaches, err := CheckFlows(cctx, db, answers, 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("check the flows: %w", err)
	}
	fig.Flows = flows
	fig.Breaches = append(fig.Breaches, breaches...)
	return fig, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// waitReady pings db until it answers (after a restart, recovery takes a
// moment).
func waitReady(ctx context.Context, db *sqlx.DB) error {
	for {
		err := db.PingContext(ctx)
		if err == nil {
			return nil
		}
		if sleepCtx(ctx, 200*time.Millisecond) != nil {
			return fmt.Errorf("database not ready: %w", err)
		}
	}
}

var digits = regexp.MustCompile(`[0-9]+`)

// errorShape drops the key and numbers from an error, so that errors of one
// kind count together.
func errorShape(msg string) string {
	if i := strings.Index(msg, `key "`); i >= 0 {
		if j := strings.Index(msg[i+5:], `"`); j >= 0 {
			msg = msg[:i+4] + "K" + msg[i+5+j+1:]
		}
	}
	msg = digits.ReplaceAllString(msg, "N")
	if len(msg) > 160 {
		msg = msg[:160]
	}
	return msg
}

func topErrors(m map[string]int, n int) []string {
	type kv struct {
		k string
		v int
	}
	var list []kv
	for k, v := range m {
		list = append(list, kv{k, v})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].v > list[j].v })
	var out []string
	for i := 0; i < len(list) && i < n; i++ {
		out = append(out, fmt.Sprintf("%d x %s", list[i].v, list[i].k))
	}
	return out
}
