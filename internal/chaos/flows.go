package chaos

// The flow workload: beside the Do callers, each worker runs clients of a
// flow (a step, a call to a provider that honours keys, a step) over a
// window of flow keys of their own scope, and a completer. The checker
// finishes what the workers left with a completer of its own, then
// verifies each flow key from the database: the flow finished (or its
// give-up stored), each business row once, the provider charged once.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

const (
	// FlowScope is the store scope of the flow workload, apart from Do's.
	FlowScope = "chaos-flows"
	// FlowName is the flow's name.
	FlowName = "chaos-checkout"
	// FlowEffectsTable holds the flow's business rows: one per step.
	FlowEffectsTable = "chaos_flow_effects"
	// ProviderTable holds the provider's charges, one per key it is given
	// (its primary key), with the flow key beside it; ProviderCallsTable
	// every call it got.
	ProviderTable      = "chaos_provider_charges"
	ProviderCallsTable = "chaos_provider_calls"

	flowLease    = time.Second
	flowInterval = 100 * time.Millisecond

	pKillFlow        = 0.004 // per kill point of a flow run
	pFlowFailAtCall  = 0.05  // the run fails after the provider answered
	pFlowRollbackRun = 0.05  // the first step fails and rolls back
)

// FlowParams are a flow call's params: the same for every call of a key.
type FlowParams struct {
	Key    string `json:"key"`
	Amount int    `json:"amount"`
}

// FlowReceipt is the flow's value: the call that wrote the order row, and
// the provider's charge.
type FlowReceipt struct {
	Key    string `json:"key"`
	Amount int    `json:"amount"`
	Order  string `json:"order"`
	Charge string `json:"charge"`
}

// FlowKeyName is the name of flow key number i.
func FlowKeyName(i int) string { return "flow-" + strconv.Itoa(i) }

// flowOps are the flow's writes on one kind of store.
type flowOps[TTx any] struct {
	// insert writes the business row of step for key, by call id.
	insert func(ctx context.Context, tx TTx, key, step, id string) error
	// charge asks the provider to charge under pkey: a key it has seen is
	// answered with its first charge's id, not charged again.
	charge func(ctx context.Context, pkey, key, id string) (string, error)
}

// runInfo is what a run's context tells the flow: the call's id and the
// fault it was given.
type runInfo struct{ id, fault string }

type runInfoKey struct{}

func infoOf(ctx context.Context) runInfo {
	if ri, ok := ctx.Value(runInfoKey{}).(runInfo); ok {
		return ri
	}
	return runInfo{id: fmt.Sprintf("completer.p%d", os.Getpid())}
}

// newFlow is the workload's flow. kill runs at each kill point.
func newFlow[TTx any](ops flowOps[TTx], kill func(point string)) *idempotency.Flow[FlowParams, FlowReceipt, TTx] {
	return idempotency.NewFlow(FlowName, func(ctx context.Context, s *idempotency.Steps[TTx], p FlowParams) (FlowReceipt, error) {
		ri := infoOf(ctx)
		order, err := idempotency.Step(s, "order", func(ctx context.Context, tx TTx) (string, error) {
			if err := ops.insert(ctx, tx, p.Key, "order", ri.id); err != nil {
				return "", err
			}
			kill("kill_flow_in_step")
			if ri.fault == "rollback" {
				return "", errInjected
			}
			return ri.id, nil
		})
		if err != nil {
			return FlowReceipt{}, err
		}
		charge, err := idempotency.Call(s, "charge", func(ctx context.Context, key string) (string, error) {
			kill("kill_flow_in_call")
			c, err := ops.charge(ctx, key, p.Key, ri.id)
			if err == nil {
				kill("kill_flow_after_call")
			}
			return c, err
		})
		if err != nil {
			return FlowReceipt{}, err
		}
		if ri.fault == "fail_after_call" {
			return FlowReceipt{}, errInjected
		}
		return idempotency.Step(s, "receipt", func(ctx context.Context, tx TTx) (FlowReceipt, error) {
			kill("kill_flow_in_step")
			return FlowReceipt{Key: p.Key, Amount: Amount(p.Key), Order: order, Charge: charge},
				ops.insert(ctx, tx, p.Key, "receipt", ri.id)
		})
	})
}

// sqlFlowOps are the flow's writes through database/sql.
func sqlFlowOps(db *sqlx.DB) flowOps[*sqlx.Tx] {
	return flowOps[*sqlx.Tx]{
		insert: func(ctx context.Context, tx *sqlx.Tx, key, step, id string) error {
			_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO `+FlowEffectsTable+` (k, step, token) VALUES (?, ?, ?)`), key, step, id)
			return err
		},
		charge: func(ctx context.Context, pkey, key, id string) (string, error) {
			if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO `+ProviderCallsTable+` (k) VALUES (?)`), pkey); err != nil {
				return "", err
			}
			var ids []string
			if err := db.SelectContext(ctx, &ids, db.Rebind(`SELECT id FROM `+ProviderTable+` WHERE k = ?`), pkey); err != nil {
				return "", err
			}
			if len(ids) > 0 {
				return ids[0], nil
			}
			_, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO `+ProviderTable+` (k, flow_key, id) VALUES (?, ?, ?)`), pkey, key, id)
			return id, err
		},
	}
}

// pgxFlowOps are the flow's writes through the pgx store's pool.
func pgxFlowOps(pool *pgxpool.Pool) flowOps[pgx.Tx] {
	return flowOps[pgx.Tx]{
		insert: func(ctx context.Context, tx pgx.Tx, key, step, id string) error {
			_, err := tx.Exec(ctx, `INSERT INTO `+FlowEffectsTable+` (k, step, token) VALUES ($1, $2, $3)`, key, step, id)
			return err
		},
		charge: func(ctx context.Context, pkey, key, id string) (string, error) {
			if _, err := pool.Exec(ctx, `INSERT INTO `+ProviderCallsTable+` (k) VALUES ($1)`, pkey); err != nil {
				return "", err
			}
			var have string
			err := pool.QueryRow(ctx, `SELECT id FROM `+ProviderTable+` WHERE k = $1`, pkey).Scan(&have)
			if err == nil {
				return have, nil
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return "", err
			}
			_, err = pool.Exec(ctx, `INSERT INTO `+ProviderTable+` (k, flow_key, id) VALUES ($1, $2, $3)`, pkey, key, id)
			return id, err
		},
	}
}

// CreateFlowTables creates the flow's business table and the provider's.
// The business table has no unique key on purpose: a duplicate row must
// be visible, not refused.
func CreateFlowTables(ctx context.Context, db *sqlx.DB) error {
	for _, q := range []string{
		`CREATE TABLE ` + FlowEffectsTable + ` (k VARCHAR(255) NOT NULL, step VARCHAR(32) NOT NULL, token VARCHAR(255) NOT NULL)`,
		`CREATE TABLE ` + ProviderTable + ` (k VARCHAR(128) NOT NULL PRIMARY KEY, flow_key VARCHAR(255) NOT NULL, id VARCHAR(255) NOT NULL)`,
		`CREATE TABLE ` + ProviderCallsTable + ` (k VARCHAR(128) NOT NULL)`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// flowHooks logs the flow events a worker's store sees, as lines of the
// worker's log, for the figures.
func flowHooks(lg *logFile) func(context.Context, idempotency.FlowEvent) {
	return func(_ context.Context, e idempotency.FlowEvent) {
		switch {
		case e.Kind == idempotency.FlowTakenOver:
			lg.write(Answer{FlowEvent: "takeover"})
		case e.Kind == idempotency.FlowResumed:
			lg.write(Answer{FlowEvent: "completer_resume"})
		case e.Kind == idempotency.FlowGaveUp:
			lg.write(Answer{FlowEvent: "completer_give_up"})
		case e.Kind == idempotency.FlowStopped && errors.Is(e.Err, idempotency.ErrFlowTakenOver):
			lg.write(Answer{FlowEvent: "stale_owner_refused"})
		}
	}
}

// runFlows runs the flow's clients and a completer on s until cfg.Until.
func runFlows[TTx any](ctx context.Context, cfg WorkerConfig, s *idempotency.TxStore[TTx], lg *logFile, ops flowOps[TTx], wg *sync.WaitGroup) {
	kill := func(point string) {
		if cfg.Faults.Kill && rand.Float64() < pKillFlow {
			lg.kill(point)
		}
	}
	f := newFlow(ops, kill)
	s = s.Scope(FlowScope)
	cctx, cancel := context.WithDeadline(ctx, cfg.Until)
	wg.Go(func() {
		defer cancel()
		_ = idempotency.RunCompleter(cctx, s, f)
	})
	for g := range max(1, cfg.Goroutines/3) {
		wg.Go(func() { workFlows(ctx, cfg, f, s, lg, g) })
	}
}

func workFlows[TTx any](ctx context.Context, cfg WorkerConfig, f *idempotency.Flow[FlowParams, FlowReceipt, TTx], s *idempotency.TxStore[TTx], lg *logFile, g int) {
	pid := os.Getpid()
	key := ""
	for seq := 0; time.Now().Before(cfg.Until) && ctx.Err() == nil; seq++ {
		// A client that failed retries the same key, or gives up and
		// leaves the flow to the completer.
		if key == "" || rand.Float64() >= pRetrySameKey {
			base := 0
			if cfg.KeyEvery > 0 {
				base = int(time.Since(cfg.Start) / cfg.KeyEvery)
			}
			key = FlowKeyName(base/4 + rand.IntN(cfg.Keys))
		}
		a := callFlow(ctx, cfg, f, s, key, fmt.Sprintf("w%d.p%d.f%d.%d", cfg.ID, pid, g, seq))
		lg.write(a)
		switch a.Class {
		case ClassOK, ClassFinal:
			key = ""
		default:
			_ = sleepCtx(ctx, 5*time.Millisecond+rand.N(45*time.Millisecond))
		}
	}
}

// ClassTakenOver is a flow run that lost its flow to another owner.
const ClassTakenOver = "taken_over"

func callFlow[TTx any](ctx context.Context, cfg WorkerConfig, f *idempotency.Flow[FlowParams, FlowReceipt, TTx], s *idempotency.TxStore[TTx], key, id string) Answer {
	a := Answer{Call: id, Key: key, Flow: true}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if cfg.Faults.Cancel && rand.Float64() < pCancel {
		a.Injected = "cancel"
		t := time.AfterFunc(rand.N(50*time.Millisecond), cancel)
		defer t.Stop()
	}
	fault := ""
	if cfg.Faults.Conflicts {
		switch r := rand.Float64(); {
		case r < pFlowRollbackRun:
			fault = "rollback"
		case r < pFlowRollbackRun+pFlowFailAtCall:
			fault = "fail_after_call"
		}
		if fault != "" && a.Injected == "" {
			a.Injected = fault
		}
	}
	ctx = context.WithValue(ctx, runInfoKey{}, runInfo{id: id, fault: fault})
	res, err := f.Run(ctx, s, key, FlowParams{Key: key, Amount: Amount(key)})
	if err == nil {
		a.Class, a.Token, a.Amount, a.Replayed = ClassOK, res.Value.Charge, res.Value.Amount, res.Replayed
		if res.Value.Key != key {
			a.Class, a.Err = ClassError, fmt.Sprintf("value for flow key %q came back for key %q", res.Value.Key, key)
		}
		return a
	}
	a.failed(err)
	return a
}

// FlowFigures are what the flow workload did and what its check found.
type FlowFigures struct {
	Keys          int            // flow keys called, or named by the business or provider tables
	Calls         int            // flow calls answered
	Classes       map[string]int // answers by class
	Events        map[string]int // takeovers, completer resumes, give-ups, stale owners refused (workers')
	Unfinished    int            // flows the workers left, finished by the checker's completer
	CheckResumes  int            // resumes by the checker's completer
	Finished      int            // keys holding the flow's value
	GaveUp        int            // keys holding a give-up
	RanAtCheck    int            // keys no client had started, run by the check
	ProviderCalls int
	ChargesPerKey map[int]int // number of keys by charges counted at the provider
}

func (f FlowFigures) String() string {
	charges := map[string]int{}
	for n, keys := range f.ChargesPerKey {
		charges[fmt.Sprintf("%d_charge(s)", n)] = keys
	}
	return fmt.Sprintf("flows: keys=%d calls=%d finished=%d gave_up=%d ran_at_check=%d left_to_checker=%d checker_resumes=%d provider_calls=%d\n"+
		"  flow answers: %s\n  flow events: %s\n  provider, keys by charges: %s",
		f.Keys, f.Calls, f.Finished, f.GaveUp, f.RanAtCheck, f.Unfinished, f.CheckResumes, f.ProviderCalls,
		formatCounts(f.Classes), formatCounts(f.Events), formatCounts(charges))
}

// CheckFlows finishes the flows the workers left with a completer of its
// own (bounded by wait), then verifies every flow key from the database:
//
//  1. the key holds the flow's value or a give-up, and no flow row is left;
//  2. a finished flow has one order row and one receipt row, written by
//     the call its value names, and the provider charged it once, with the
//     charge its value names; a flow given up has at most one of each;
//  3. every answer a client got for the key is the one the key replays.
//
// It returns the figures and one line per breach.
func CheckFlows(ctx context.Context, db *sqlx.DB, answers []Answer, wait time.Duration) (FlowFigures, []string, error) {
	fig := FlowFigures{Classes: map[string]int{}, Events: map[string]int{}, ChargesPerKey: map[int]int{}}
	var breaches []string
	breach := func(format string, args ...any) {
		if len(breaches) < 200 {
			breaches = append(breaches, fmt.Sprintf(format, args...))
		}
	}
	keys := map[string]bool{}
	for _, a := range answers {
		switch {
		case a.FlowEvent != "":
			fig.Events[a.FlowEvent]++
		case a.Flow:
			fig.Calls++
			fig.Classes[a.Class]++
			keys[a.Key] = true
			if a.Class == ClassMismatch {
				breach("flow call %s for key %s: ErrParamsMismatch with equal params: %s", a.Call, a.Key, a.Err)
			}
		}
	}

	var resumes sync.Mutex
	s, err := idempotency.New(db, idempotency.WithLease(flowLease), idempotency.WithCompleterInterval(flowInterval),
		idempotency.WithWait(wait), idempotency.WithHooks(idempotency.Hooks{Flow: func(_ context.Context, e idempotency.FlowEvent) {
			if e.Kind == idempotency.FlowResumed {
				resumes.Lock()
				fig.CheckResumes++
				resumes.Unlock()
			}
		}}))
	if err != nil {
		return fig, nil, err
	}
	s = s.Scope(FlowScope)
	f := newFlow(sqlFlowOps(db), func(string) {})
	left := func() (int, error) {
		var n int
		err := db.GetContext(ctx, &n, db.Rebind(`SELECT COUNT(*) FROM idempotency_flows WHERE scope = ?`), FlowScope)
		return n, err
	}
	if fig.Unfinished, err = left(); err != nil {
		return fig, nil, err
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = idempotency.RunCompleter(cctx, s, f)
	}()
	deadline := time.Now().Add(wait)
	n := fig.Unfinished
	for n > 0 && time.Now().Before(deadline) {
		_ = sleepCtx(ctx, 50*time.Millisecond)
		if n, err = left(); err != nil {
			stop()
			<-done
			return fig, nil, err
		}
	}
	stop()
	<-done
	if n > 0 {
		breach("%d flows unfinished %v after the run, with a completer running", n, wait)
	}

	// Keys the tables name but no answer did (a client killed before it
	// logged) are checked too.
	for _, q := range []string{`SELECT DISTINCT k FROM ` + FlowEffectsTable, `SELECT DISTINCT flow_key FROM ` + ProviderTable} {
		var ks []string
		if err := db.SelectContext(ctx, &ks, q); err != nil {
			return fig, nil, err
		}
		for _, k := range ks {
			keys[k] = true
		}
	}
	fig.Keys = len(keys)
	if err := db.GetContext(ctx, &fig.ProviderCalls, `SELECT COUNT(*) FROM `+ProviderCallsTable); err != nil {
		return fig, nil, err
	}
	byKey := map[string][]Answer{}
	for _, a := range answers {
		if a.Flow {
			byKey[a.Key] = append(byKey[a.Key], a)
		}
	}
	for k := range keys {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := f.Run(context.WithValue(rctx, runInfoKey{}, runInfo{id: "check." + k}), s, k, FlowParams{Key: k, Amount: Amount(k)})
		cancel()
		type row struct {
			Step  string `db:"step"`
			Token string `db:"token"`
		}
		var rows []row
		if qerr := db.SelectContext(ctx, &rows, db.Rebind(`SELECT step, token FROM `+FlowEffectsTable+` WHERE k = ?`), k); qerr != nil {
			return fig, nil, qerr
		}
		var charges []string
		if qerr := db.SelectContext(ctx, &charges, db.Rebind(`SELECT id FROM `+ProviderTable+` WHERE flow_key = ?`), k); qerr != nil {
			return fig, nil, qerr
		}
		fig.ChargesPerKey[len(charges)]++
		orders, receipts := []string{}, []string{}
		for _, r := range rows {
			if r.Step == "order" {
				orders = append(orders, r.Token)
			} else {
				receipts = append(receipts, r.Token)
			}
		}
		var fe *idempotency.FinalError
		code := ""
		switch {
		case errors.As(err, &fe):
			fig.GaveUp++
			code = fe.Code
			if len(orders) > 1 || len(receipts) > 1 || len(charges) > 1 {
				breach("flow key %s gave up with order rows %v, receipt rows %v, charges %v; want at most one of each", k, orders, receipts, charges)
			}
		case err != nil:
			breach("flow key %s: a retry after the run neither replays nor runs: %v", k, err)
			continue
		default:
			if res.Replayed {
				fig.Finished++
			} else {
				fig.RanAtCheck++
				if len(byKey[k]) > 0 && hasOK(byKey[k]) {
					breach("flow key %s: clients got answers, yet the check ran the flow again", k)
				}
			}
			v := res.Value
			switch {
			case len(orders) != 1 || len(receipts) != 1:
				breach("flow key %s: order rows %v, receipt rows %v; want exactly one of each", k, orders, receipts)
			case orders[0] != v.Order:
				breach("flow key %s: order row by call %s, the flow's value names call %s", k, orders[0], v.Order)
			}
			if len(charges) != 1 || charges[0] != v.Charge {
				breach("flow key %s: provider charges %v, the flow's value names charge %q; want exactly that one", k, charges, v.Charge)
			}
			if v.Key != k || v.Amount != Amount(k) {
				breach("flow key %s: its value %+v belongs to another call", k, v)
			}
		}
		for _, a := range byKey[k] {
			switch {
			case a.Class == ClassOK && (fe != nil || a.Token != res.Value.Charge):
				breach("flow call %s for key %s got charge %q, the key replays %q (gave up: %v)", a.Call, k, a.Token, res.Value.Charge, fe != nil)
			case a.Class == ClassFinal && a.Code != code:
				breach("flow call %s for key %s got final failure %q, the key holds %q", a.Call, k, a.Code, code)
			}
		}
	}
	return fig, breaches, nil
}

func hasOK(as []Answer) bool {
	for _, a := range as {
		if a.Class == ClassOK || a.Class == ClassFinal {
			return true
		}
	}
	return false
}
