// Package chaos proves the idempotency protocol's promise under faults: no
// duplicate effect and no lost acknowledged write.
//
// A run (Run) starts several worker processes (RunWorker), each with many
// goroutines that call idempotency.Run over a small key space, so most calls
// are duplicates or client retries of a key (same key, same params). Each
// call's fn inserts one business row through tx, tagged with the call's id.
// Every answer a worker gets is appended to its log file with one write(2),
// so a worker killed with SIGKILL loses nothing it was told.
//
// While the workers run, the run injects faults, alone or mixed: SIGKILL of
// workers at random moments (and workers kill themselves before the claim,
// inside fn and around COMMIT), a TCP proxy that delays, stalls, and cuts
// connections mid-statement and mid-COMMIT, restarts of a private database
// server, lock-wait timeouts, twins whose winner rolls back, and context
// cancellation and deadlines at random points.
//
// Afterwards Check compares the logs with the database alone (see Check for
// the invariants), every key is called once more to prove none is stuck, and
// the database is checked again.
package chaos

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
	"github.com/jackc/pgx/v5/stdlib"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// EffectsTable is the business table fn writes one row to per committed call.
const EffectsTable = "chaos_effects"

// Scope is the store scope the workload runs under.
const Scope = "chaos"

// WorkerConfig is what one worker process runs; Run passes it as JSON.
type WorkerConfig struct {
	ID         int           `json:"id"`
	Driver     string        `json:"driver"`
	DSN        string        `json:"dsn"`
	Keys       int           `json:"keys"`      // keys live at once (the window)
	Start      time.Time     `json:"start"`     // when the window starts moving
	KeyEvery   time.Duration `json:"key_every"` // the window moves one key on this often`
	Goroutines int           `json:"goroutines"`
	Until      time.Time     `json:"until"`
	Log        string        `json:"log"`
	Isolation  string        `json:"isolation"` // "", "read committed", "repeatable read", "serializable"
	Wait       time.Duration `json:"wait"`
	Faults     Faults        `json:"faults"`
	Flows      bool          `json:"flows"`     // run the flow workload beside Do's (see runFlows)
	PgBouncer  bool          `json:"pgbouncer"` // DSN goes through PgBouncer (see scratch.BouncedDSN)
}

// Faults says which faults a run injects.
type Faults struct {
	Kill      bool `json:"kill"`      // SIGKILL workers: from outside, and at chosen points from inside
	Cancel    bool `json:"cancel"`    // contexts cancelled or past their deadline at random points
	Conflicts bool `json:"conflicts"` // fn rolls back (twins take over) or outlasts the twins' wait
	Proxy     bool `json:"proxy"`     // connections go through a faulty TCP proxy
	Restart   bool `json:"restart"`   // the database server restarts (private server)
}

// Params are a call's params: the same for every call of a key.
type Params struct {
	Key    string `json:"key"`
	Amount int    `json:"amount"`
}

// Receipt is fn's value; Token is the id of the call whose fn committed.
type Receipt struct {
	Key    string `json:"key"`
	Amount int    `json:"amount"`
	Token  string `json:"token"`
}

// Amount is the deterministic amount of a key, so that retries send equal
// params.
func Amount(key string) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32()%100000) + 1
}

// KeyName is the name of key number i.
func KeyName(i int) string { return "key-" + strconv.Itoa(i) }

// Answer is one line of a worker's log: what one call returned, or a fault
// the worker injected into itself (Fault set, no call).
type Answer struct {
	Call     string `json:"call,omitempty"`
	Key      string `json:"key,omitempty"`
	Class    string `json:"class,omitempty"`
	Token    string `json:"token,omitempty"`
	Amount   int    `json:"amount,omitempty"`
	Replayed bool   `json:"replayed,omitempty"`
	Code     string `json:"code,omitempty"`
	Err      string `json:"err,omitempty"`
	Injected string `json:"injected,omitempty"` // the fault this call was given: cancel, deadline, rollback, final, slow
	Fault    string `json:"fault,omitempty"`
	// Flow marks the answer of a flow call (FlowScope); FlowEvent is a
	// line for a flow event the worker's store saw (no call).
	Flow      bool   `json:"flow,omitempty"`
	FlowEvent string `json:"flow_event,omitempty"`
}

// Answer classes.
const (
	ClassOK         = "ok"          // a value (fresh or replayed)
	ClassFinal      = "final"       // a stored final failure
	ClassFnError    = "fn_error"    // fn's injected error: rolled back
	ClassUnknown    = "unknown"     // ErrOutcomeUnknown
	ClassInProgress = "in_progress" // ErrInProgress
	ClassCtx        = "ctx"         // the context ended
	ClassMismatch   = "mismatch"    // ErrParamsMismatch: never expected
	ClassError      = "error"       // any other error
)

var errInjected = errors.New("chaos: injected failure in fn")

// logFile appends lines with one write each (O_APPEND), so a line is whole
// in the file once the write returns, even if the process is killed next.
type logFile struct {
	mu sync.Mutex
	f  *os.File
}

func (l *logFile) write(a Answer) {
	b, _ := json.Marshal(a)
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.f.Write(b); err != nil {
		// A worker that cannot log would make the check blind: stop now.
		fmt.Fprintln(os.Stderr, "chaos worker: log:", err)
		os.Exit(3)
	}
}

// kill ends this process as kill -9 would, after logging the point.
func (l *logFile) kill(point string) {
	l.write(Answer{Fault: point})
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

// Probabilities per call of the faults a worker injects into itself.
const (
	pKillBeforeClaim = 0.0015
	pKillInFn        = 0.0015
	pKillAtCommit    = 0.002
	pCancel          = 0.04
	pDeadline        = 0.04
	pRollback        = 0.06
	pFinal           = 0.02
	pSlow            = 0.04
	pRetrySameKey    = 0.6
)

// RunWorker runs the workload until cfg.Until and returns nil, or an error
// when it cannot start.
func RunWorker(ctx context.Context, cfg WorkerConfig) error {
	f, err := os.OpenFile(cfg.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	lg := &logFile{f: f}

	opts := []idempotency.Option{idempotency.WithWait(cfg.Wait),
		idempotency.WithLease(flowLease), idempotency.WithCompleterInterval(flowInterval)}
	if lvl, ok := isolations[cfg.Isolation]; ok {
		opts = append(opts, idempotency.WithIsolation(lvl))
	}
	hooks := idempotency.Hooks{Flow: flowHooks(lg)}
	if cfg.Faults.Kill {
		hooks.CallStart = func(ctx context.Context, _, _ string) context.Context {
			if rand.Float64() < pKillBeforeClaim {
				lg.kill("kill_before_claim")
			}
			return ctx
		}
	}
	opts = append(opts, idempotency.WithHooks(hooks))
	if cfg.PgBouncer {
		var err error
		if cfg.DSN, err = scratch.BouncedDSN(cfg.Driver, cfg.DSN); err != nil {
			return err
		}
	}
	if cfg.Driver == PgxStore {
		return runPgx(ctx, cfg, lg, opts)
	}

	var db *sqlx.DB
	if cfg.PgBouncer && cfg.Driver == "pgx" {
		pc, err := pgx.ParseConfig(cfg.DSN)
		if err != nil {
			return err
		}
		scratch.NoCancelRequests(pc)
		db = sqlx.NewDb(stdlib.OpenDB(*pc), "pgx")
	} else {
		var err error
		if db, err = sqlx.Open(cfg.Driver, cfg.DSN); err != nil {
			return err
		}
	}
	defer db.Close()
	db.SetMaxOpenConns(cfg.Goroutines + 4)
	db.SetConnMaxLifetime(30 * time.Second)
	s, err := idempotency.New(db, opts...)
	if err != nil {
		return err
	}
	insert := func(ctx context.Context, tx *sqlx.Tx, key, id string) error {
		_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO `+EffectsTable+` (k, token) VALUES (?, ?)`), key, id)
		return err
	}
	runAll(ctx, cfg, s, lg, insert, sqlFlowOps(db))
	return nil
}

// PgxStore is the driver name that makes a worker call through the pgx
// store on a pgxpool.Pool instead of database/sql.
const PgxStore = "pgxstore"

// runPgx runs the workload on the pgx store. Half its workers describe
// statements by their text on every batch (QueryExecModeCacheDescribe),
// so that the proxy sees COMMIT go by and can cut around it; the others
// run pgx's default, prepared statements by name.
func runPgx(ctx context.Context, cfg WorkerConfig, lg *logFile, opts []idempotency.Option) error {
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return err
	}
	pc.MaxConns = int32(cfg.Goroutines + 4)
	if cfg.PgBouncer {
		scratch.NoCancelRequests(pc.ConnConfig)
	}
	pc.MaxConnLifetime = 30 * time.Second
	if cfg.ID%2 == 0 && !cfg.PgBouncer {
		pc.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return err
	}
	defer pool.Close()
	s, err := pgxstore.New(pool, opts...)
	if err != nil {
		return err
	}
	insert := func(ctx context.Context, tx pgx.Tx, key, id string) error {
		_, err := tx.Exec(ctx, `INSERT INTO `+EffectsTable+` (k, token) VALUES ($1, $2)`, key, id)
		return err
	}
	runAll(ctx, cfg, s, lg, insert, pgxFlowOps(pool))
	return nil
}

// runAll runs cfg.Goroutines callers of Do on s (in Scope) until
// cfg.Until, insert writing one business row through the call's
// transaction, and beside them the flow workload (see runFlows).
func runAll[TTx any](ctx context.Context, cfg WorkerConfig, s *idempotency.TxStore[TTx], lg *logFile, insert func(context.Context, TTx, string, string) error, ops flowOps[TTx]) {
	var wg sync.WaitGroup
	do := s.Scope(Scope)
	for g := range cfg.Goroutines {
		wg.Go(func() { work(ctx, cfg, do, lg, g, insert) })
	}
	if cfg.Flows {
		runFlows(ctx, cfg, s, lg, ops, &wg)
	}
	wg.Wait()
}

var isolations = map[string]sql.IsolationLevel{
	"read committed":  sql.LevelReadCommitted,
	"repeatable read": sql.LevelRepeatableRead,
	"serializable":    sql.LevelSerializable,
}

func work[TTx any](ctx context.Context, cfg WorkerConfig, s *idempotency.TxStore[TTx], lg *logFile, g int, insert func(context.Context, TTx, string, string) error) {
	pid := os.Getpid()
	key := ""
	for seq := 0; time.Now().Before(cfg.Until) && ctx.Err() == nil; seq++ {
		// A client retries the key it just failed on, or sends a new
		// request for a key drawn from a small window of keys (so, many
		// twins) that moves on with time (so, many fresh keys).
		if key == "" || rand.Float64() >= pRetrySameKey {
			base := 0
			if cfg.KeyEvery > 0 {
				base = int(time.Since(cfg.Start) / cfg.KeyEvery)
			}
			key = KeyName(base + rand.IntN(cfg.Keys))
		}
		a := call(ctx, cfg, s, lg, key, fmt.Sprintf("w%d.p%d.g%d.%d", cfg.ID, pid, g, seq), insert)
		lg.write(a)
		switch a.Class {
		case ClassOK, ClassFinal:
			key = ""
		case ClassError, ClassUnknown, ClassInProgress:
			// A client backs off before it retries (the server may be
			// restarting).
			_ = sleepCtx(ctx, 5*time.Millisecond+rand.N(45*time.Millisecond))
		}
	}
}

// call makes one idempotent call and describes its answer.
func call[TTx any](ctx context.Context, cfg WorkerConfig, s *idempotency.TxStore[TTx], lg *logFile, key, id string, insert func(context.Context, TTx, string, string) error) Answer {
	a := Answer{Call: id, Key: key}
	// Every call has a deadline: a stalled connection must not hang a
	// worker past the run.
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if cfg.Faults.Cancel {
		switch r := rand.Float64(); {
		case r < pCancel:
			a.Injected = "cancel"
			t := time.AfterFunc(rand.N(20*time.Millisecond), cancel)
			defer t.Stop()
		case r < pCancel+pDeadline:
			a.Injected = "deadline"
			var c context.CancelFunc
			ctx, c = context.WithTimeout(ctx, rand.N(20*time.Millisecond))
			defer c()
		}
	}
	fault := ""
	if cfg.Faults.Conflicts {
		switch r := rand.Float64(); {
		case r < pRollback:
			fault = "rollback"
		case r < pRollback+pFinal:
			fault = "final"
		case r < pRollback+pFinal+pSlow:
			fault = "slow"
		}
		if fault != "" && a.Injected == "" {
			a.Injected = fault
		}
	}
	p := Params{Key: key, Amount: Amount(key)}
	fn := func(ctx context.Context, tx TTx) (Receipt, error) {
		if cfg.Faults.Kill && rand.Float64() < pKillInFn {
			lg.kill("kill_in_fn")
		}
		if err := insert(ctx, tx, key, id); err != nil {
			return Receipt{}, err
		}
		switch fault {
		case "rollback":
			// Twins wait on this call's claim, then one takes over (on
			// MySQL and MariaDB, others may get deadlock 1213).
			if err := sleepCtx(ctx, rand.N(cfg.Wait/2+1)); err != nil {
				return Receipt{}, err
			}
			return Receipt{}, errInjected
		case "final":
			return Receipt{}, &idempotency.FinalError{Code: "declined:" + id, Err: errors.New("chaos: declined")}
		case "slow":
			// Outlasts the twins' wait bound now and then: ErrInProgress.
			if err := sleepCtx(ctx, rand.N(cfg.Wait+cfg.Wait/2+1)); err != nil {
				return Receipt{}, err
			}
		}
		if cfg.Faults.Kill && rand.Float64() < pKillAtCommit {
			// Lands in the Save statement or COMMIT, or just after.
			d := rand.N(3 * time.Millisecond)
			time.AfterFunc(d, func() { lg.kill("kill_at_commit") })
		}
		return Receipt{Key: key, Amount: p.Amount, Token: id}, nil
	}
	res, err := idempotency.Run(ctx, s, key, p, fn)
	if err == nil {
		a.Class, a.Token, a.Amount, a.Replayed = ClassOK, res.Value.Token, res.Value.Amount, res.Replayed
		if res.Value.Key != key {
			a.Class, a.Err = ClassError, fmt.Sprintf("value for key %q came back for key %q", res.Value.Key, key)
		}
		return a
	}
	a.failed(err)
	return a
}

// failed sorts the error a call (Do's or a flow's) answered with.
func (a *Answer) failed(err error) {
	var fe *idempotency.FinalError
	switch {
	case errors.As(err, &fe):
		a.Class, a.Code = ClassFinal, fe.Code
	case errors.Is(err, errInjected):
		a.Class = ClassFnError
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		a.Class = ClassUnknown
	case errors.Is(err, idempotency.ErrFlowTakenOver):
		a.Class = ClassTakenOver
	case errors.Is(err, idempotency.ErrInProgress):
		a.Class = ClassInProgress
	case errors.Is(err, idempotency.ErrParamsMismatch):
		a.Class = ClassMismatch
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		a.Class = ClassCtx
	default:
		a.Class = ClassError
	}
	a.Err = err.Error()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// CreateEffects creates the business table. It has no unique key on k on
// purpose: a duplicate effect must be visible, not refused.
func CreateEffects(ctx context.Context, db *sqlx.DB) error {
	_, err := db.ExecContext(ctx, `CREATE TABLE `+EffectsTable+` (k VARCHAR(255) NOT NULL, token VARCHAR(255) NOT NULL)`)
	return err
}
