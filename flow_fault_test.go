//go:build unix

package idempotency_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// The fault test of flows: a child process runs a flow and is killed
// (SIGKILL) at a point of it, or stopped (SIGSTOP) past its lease and
// continued; the parent's completer then finishes the flow. The provider
// keeps its own tables, so charges are counted where they are made, not
// from the library's.

const faultLease = 700 * time.Millisecond

// faultTables are the business table and the provider's. The provider
// records every call, and one charge per key it is given (its primary
// key), with the flow's ref beside it, so that a flow charged under two
// keys shows as two charges of one ref.
var faultTables = []string{
	`CREATE TABLE fault_rows (ref VARCHAR(255) NOT NULL)`,
	`CREATE TABLE provider_calls (k VARCHAR(64) NOT NULL)`,
	`CREATE TABLE provider_charges (k VARCHAR(64) NOT NULL PRIMARY KEY, ref VARCHAR(255) NOT NULL, id VARCHAR(64) NOT NULL)`,
}

// pgxStoreBackend is the pgx store on Postgres: the tests open it with the
// pgx stdlib driver for migrations and counts, the flows run on a
// pgxpool.Pool.
var pgxStoreBackend = testdb.Backend{Name: "pgxstore", Driver: "pgx", Kind: "postgres"}

// faultBackends are the backends of the fault tests: every testdb backend
// and the pgx store.
func faultBackends() []testdb.Backend {
	var bs []testdb.Backend
	for _, b := range testdb.Backends() {
		bs = append(bs, b)
		if b.Name == "pgx" {
			bs = append(bs, pgxStoreBackend)
		}
	}
	return bs
}

// faultDriver is what a rig is opened with: the driver, or "pgxstore".
func faultDriver(b testdb.Backend) string {
	if b.Name == pgxStoreBackend.Name {
		return "pgxstore"
	}
	return b.Driver
}

// faultOps are what the fault flow does on one kind of store: write a
// business row in a step's transaction, and call the provider, which
// answers a key it has seen with its first charge, without charging again.
type faultOps[TTx any] struct {
	write    func(ctx context.Context, tx TTx, ref string) error
	provider func(ctx context.Context, key, ref string) (string, error)
}

// faultFlowOf writes an order row, authorizes with the provider, writes a
// receipt row. at runs at each named point, where the child stops.
func faultFlowOf[TTx any](ops faultOps[TTx], at func(string)) *idempotency.Flow[string, string, TTx] {
	return idempotency.NewFlow("fault", func(ctx context.Context, s *idempotency.Steps[TTx], ref string) (string, error) {
		if _, err := idempotency.Step(s, "order", func(ctx context.Context, tx TTx) (bool, error) {
			err := ops.write(ctx, tx, ref+"/order")
			at("step-before-commit")
			return true, err
		}); err != nil {
			return "", err
		}
		at("step-after-commit")
		auth, err := idempotency.Call(s, "authorize", func(ctx context.Context, key string) (string, error) {
			at("call-during")
			id, err := ops.provider(ctx, key, ref)
			if err != nil {
				return "", err
			}
			at("call-after-return")
			return "auth-" + id, nil
		})
		if err != nil {
			return "", err
		}
		at("paused")
		v, err := idempotency.Step(s, "receipt", func(ctx context.Context, tx TTx) (string, error) {
			return auth, ops.write(ctx, tx, ref+"/receipt")
		})
		at("before-finish")
		return v, err
	})
}

// chargeID is the provider's id of a new charge: unique per charge, so
// that two charges of one flow give two answers.
var chargeSeq atomic.Int64

func chargeID(key string) string {
	return fmt.Sprintf("%s-%d-%d", key[:8], os.Getpid(), chargeSeq.Add(1))
}

// faultRig runs the fault flow on one store, through database/sql or the
// pgx store.
type faultRig struct {
	run      func(ctx context.Context, key, ref string) (idempotency.Result[string], error)
	complete func(ctx context.Context) error
	close    func()
}

func (r *faultRig) do(ctx context.Context, key, ref string) (string, error) {
	res, err := r.run(ctx, key, ref)
	return res.Value, err
}

// openRig opens the store of driver ("pgxstore" for the pgx store) on dsn
// and the fault flow on it.
func openRig(driver, dsn string, at func(string), opts ...idempotency.Option) (*faultRig, error) {
	if at == nil {
		at = func(string) {}
	}
	if driver == "pgxstore" {
		pc, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			return nil, err
		}
		pc.MaxConns = 32
		pool, err := pgxpool.NewWithConfig(context.Background(), pc)
		if err != nil {
			return nil, err
		}
		store, err := pgxstore.New(pool, opts...)
		if err != nil {
			pool.Close()
			return nil, err
		}
		f := faultFlowOf(faultOps[pgx.Tx]{
			write: func(ctx context.Context, tx pgx.Tx, ref string) error {
				_, err := tx.Exec(ctx, `INSERT INTO fault_rows (ref) VALUES ($1)`, ref)
				return err
			},
			provider: func(ctx context.Context, key, ref string) (string, error) {
				if _, err := pool.Exec(ctx, `INSERT INTO provider_calls (k) VALUES ($1)`, key); err != nil {
					return "", err
				}
				var id string
				err := pool.QueryRow(ctx, `SELECT id FROM provider_charges WHERE k = $1`, key).Scan(&id)
				if errors.Is(err, pgx.ErrNoRows) {
					id = chargeID(key)
					_, err = pool.Exec(ctx, `INSERT INTO provider_charges (k, ref, id) VALUES ($1, $2, $3)`, key, ref, id)
				}
				return id, err
			},
		}, at)
		return &faultRig{
			run: func(ctx context.Context, key, ref string) (idempotency.Result[string], error) {
				return f.Run(ctx, store, key, ref)
			},
			complete: func(ctx context.Context) error { return idempotency.RunCompleter(ctx, store, f) },
			close:    pool.Close,
		}, nil
	}
	db, err := sqlx.Open(driver, dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(32)
	store, err := idempotency.New(db, opts...)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	f := faultFlowOf(faultOps[*sqlx.Tx]{
		write: func(ctx context.Context, tx *sqlx.Tx, ref string) error {
			_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO fault_rows (ref) VALUES (?)`), ref)
			return err
		},
		provider: func(ctx context.Context, key, ref string) (string, error) {
			if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO provider_calls (k) VALUES (?)`), key); err != nil {
				return "", err
			}
			var ids []string
			if err := db.SelectContext(ctx, &ids, db.Rebind(`SELECT id FROM provider_charges WHERE k = ?`), key); err != nil {
				return "", err
			}
			if len(ids) > 0 {
				return ids[0], nil
			}
			id := chargeID(key)
			_, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO provider_charges (k, ref, id) VALUES (?, ?, ?)`), key, ref, id)
			return id, err
		},
	}, at)
	return &faultRig{
		run: func(ctx context.Context, key, ref string) (idempotency.Result[string], error) {
			return f.Run(ctx, store, key, ref)
		},
		complete: func(ctx context.Context) error { return idempotency.RunCompleter(ctx, store, f) },
		close:    func() { _ = db.Close() },
	}, nil
}

// flowCounts counts the flow events a store's hooks see.
type flowCounts struct {
	started, takenOver, resumed, gaveUp, finished, stopped atomic.Int64
	stale                                                  atomic.Int64 // stopped with ErrFlowTakenOver: a stale owner refused

	trace func(idempotency.FlowEvent) // sees every event, when set
}

func (c *flowCounts) hooks() idempotency.Option {
	return idempotency.WithHooks(idempotency.Hooks{Flow: func(_ context.Context, e idempotency.FlowEvent) {
		if c.trace != nil {
			c.trace(e)
		}
		switch e.Kind {
		case idempotency.FlowStarted:
			c.started.Add(1)
		case idempotency.FlowTakenOver:
			c.takenOver.Add(1)
		case idempotency.FlowResumed:
			c.resumed.Add(1)
		case idempotency.FlowGaveUp:
			c.gaveUp.Add(1)
		case idempotency.FlowFinished:
			c.finished.Add(1)
		case idempotency.FlowStopped:
			c.stopped.Add(1)
			if errors.Is(e.Err, idempotency.ErrFlowTakenOver) {
				c.stale.Add(1)
			}
		}
	}})
}

// TestHelperFlowChild is the child process of TestFlowFaults.
func TestHelperFlowChild(t *testing.T) {
	driver, dsn, point := os.Getenv("FLOW_CHILD_DRIVER"), os.Getenv("FLOW_CHILD_DSN"), os.Getenv("FLOW_CHILD_POINT")
	if dsn == "" {
		t.Skip("runs as a child of TestFlowFaults")
	}
	rig, err := openRig(driver, dsn, func(at string) {
		if at != point {
			return
		}
		fmt.Println("READY", at)
		if at == "paused" {
			time.Sleep(time.Second) // the parent stops the process meanwhile
			return
		}
		select {} // the parent kills the process here
	}, idempotency.WithLease(faultLease))
	if err != nil {
		t.Fatal(err)
	}
	defer rig.close()
	_, err = rig.do(context.Background(), "k", "r")
	if errors.Is(err, idempotency.ErrFlowTakenOver) {
		fmt.Println("TAKEN OVER")
		return
	}
	fmt.Println("RESULT", err)
}

// TestFlowFaults: a flow whose owner is killed before or after a step's
// COMMIT, during a call, after a call returned but before it was recorded,
// or before the flow's end, is finished by a completer with each business
// row written once and the provider charging once; an owner stopped past
// its lease while the completer takes over records nothing once continued.
func TestFlowFaults(t *testing.T) {
	points := []string{"step-before-commit", "step-after-commit", "call-during", "call-after-return", "before-finish", "paused"}
	for _, b := range faultBackends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			var fig killFigures
			for _, point := range points {
				t.Run(point, func(t *testing.T) { faultCase(t, b, point, &fig) })
			}
			if fig.flows == 0 {
				return // skipped
			}
			t.Logf("%s: %d flows, %d kills, %d stops, %d completer resumes, %d stale owners refused, %d give-ups, provider: %d calls, charges per key %v",
				b.Name, fig.flows, fig.kills, fig.stops, fig.resumes, fig.stale, fig.gaveUp, fig.calls, fig.chargesPerKey)
		})
	}
}

// killFigures add up the cases of one backend.
type killFigures struct {
	flows, kills, stops, resumes, stale, gaveUp, calls int
	chargesPerKey                                      []int
}

func faultCase(t *testing.T, b testdb.Backend, point string, fig *killFigures) {
	ctx := context.Background()
	dsn := b.DSN(t)
	db := b.OpenDSN(t, dsn)
	for _, q := range faultTables {
		db.MustExec(q)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperFlowChild$", "-test.v")
	cmd.Env = append(os.Environ(), "FLOW_CHILD_DRIVER="+faultDriver(b), "FLOW_CHILD_DSN="+dsn, "FLOW_CHILD_POINT="+point)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	ready := false
	for !ready && lines.Scan() {
		ready = strings.HasPrefix(lines.Text(), "READY "+point)
	}
	if !ready {
		_ = cmd.Wait()
		t.Fatalf("the child ended before %s", point)
	}

	var ev flowCounts
	rig, err := openRig(faultDriver(b), dsn, nil, idempotency.WithLease(faultLease),
		idempotency.WithCompleterInterval(20*time.Millisecond), ev.hooks())
	if err != nil {
		t.Fatal(err)
	}
	defer rig.close()
	if point == "paused" {
		if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		fig.stops++
	} else {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		fig.kills++
	}

	// The pgx store begins a flow in the transaction of its first step:
	// killed before that commits, the owner leaves nothing, as a Do would,
	// and nothing reached the provider; the client's retry runs it anew.
	unstarted := faultDriver(b) == "pgxstore" && (point == "step-before-commit" || point == "step-after-commit")
	if unstarted {
		if n := count(t, db, `SELECT COUNT(*) FROM idempotency_flows`) + count(t, db, `SELECT COUNT(*) FROM fault_rows`); n != 0 {
			t.Errorf("%d rows left by a flow killed before its first commit; want none", n)
		}
	}

	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rig.complete(cctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for count(t, db, `SELECT COUNT(*) FROM idempotency_flows`) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the completer did not finish the flow in 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	if point == "paused" {
		if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		taken := false
		for lines.Scan() {
			taken = taken || lines.Text() == "TAKEN OVER"
		}
		_ = cmd.Wait()
		if !taken {
			t.Error("the stopped owner, continued, did not learn that it lost the flow")
		} else {
			fig.stale++
		}
	}

	resumes := int64(1)
	if unstarted {
		resumes = 0
		if r, err := rig.run(ctx, "k", "r"); err != nil || r.Replayed || !strings.HasPrefix(r.Value, "auth-") {
			t.Errorf("the retry of a flow that never began: %+v, %v; want it run anew", r, err)
		}
	}
	r, err := rig.run(ctx, "k", "r")
	if err != nil || !r.Replayed || !strings.HasPrefix(r.Value, "auth-") {
		t.Errorf("after the completer: %+v, %v; want its value replayed", r, err)
	}
	orders := count(t, db, `SELECT COUNT(*) FROM fault_rows WHERE ref = 'r/order'`)
	receipts := count(t, db, `SELECT COUNT(*) FROM fault_rows WHERE ref = 'r/receipt'`)
	charges := count(t, db, `SELECT COUNT(*) FROM provider_charges WHERE ref = 'r'`)
	calls := count(t, db, `SELECT COUNT(*) FROM provider_calls`)
	if orders != 1 || receipts != 1 || charges != 1 || ev.resumed.Load() != resumes || ev.gaveUp.Load() != 0 {
		t.Errorf("%d order rows, %d receipt rows, %d provider charges, %d resumes, %d give-ups; want 1, 1, 1, %d, 0",
			orders, receipts, charges, ev.resumed.Load(), ev.gaveUp.Load(), resumes)
	}
	if r.Value != "auth-"+charged(t, db, "r") {
		t.Errorf("the flow answered %q; the provider's charge is %q", r.Value, charged(t, db, "r"))
	}
	fig.flows++
	fig.resumes += int(ev.resumed.Load())
	fig.gaveUp += int(ev.gaveUp.Load())
	fig.calls += calls
	fig.chargesPerKey = append(fig.chargesPerKey, charges)
	t.Logf("%s: provider called %d times for %d charge", point, calls, charges)
}

// charged is the id of the provider's charge for ref ("" if none).
func charged(t *testing.T, db *sqlx.DB, ref string) string {
	t.Helper()
	var ids []string
	if err := db.Select(&ids, db.Rebind(`SELECT id FROM provider_charges WHERE ref = ?`), ref); err != nil {
		t.Fatal(err)
	}
	if len(ids) == 0 {
		return ""
	}
	return ids[0]
}
