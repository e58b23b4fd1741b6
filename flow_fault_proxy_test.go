//go:build unix

package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
)

// The fault test of flows under a network that fails: flows run through
// internal/faultproxy, which cuts connections mid-statement and around
// COMMIT (before it reaches the server, or after the server ran it and
// before its answer reaches the client) and delays some messages past the
// lease. Half the clients retry with the same key until they get an
// answer, the other half give up after their first error and leave the
// flow to the completer, which also runs through the proxy.

const (
	proxyFlows    = 20
	proxyLease    = 500 * time.Millisecond
	proxyInterval = 50 * time.Millisecond
	proxyFaults   = 3 * time.Second // how long the proxy injects faults
)

// armModes are the one-shot cuts the test arms in turn, beside the
// proxy's random faults.
var armModes = []faultproxy.Mode{faultproxy.CutAfterCommit, faultproxy.CutBeforeCommit, faultproxy.CutAfterNext, faultproxy.CutBeforeNext}

// TestFlowFaultsProxy: with the faults stopped, every flow finishes (its
// value, or the completer's give-up, stored), each business row exists
// once, the provider charged once per key, and every answer a client got
// for a key is the one its key replays.
func TestFlowFaultsProxy(t *testing.T) {
	for _, b := range faultBackends() {
		if b.Kind == "sqlite" || b.Server == "tidb" {
			continue // no network to cut; TiDB: see internal/chaos
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			proxyFaultCase(t, b)
		})
	}
}

// clientLog is what the clients of one key got.
type clientLog struct {
	mu      sync.Mutex
	answers []string // each answer, "value" or "final: message"
	errs    int      // errors that were not answers
	stale   int      // ErrFlowTakenOver
}

func (c *clientLog) add(v string, err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	var final *idempotency.FinalError
	switch {
	case err == nil:
		c.answers = append(c.answers, v)
		return true
	case errors.As(err, &final):
		c.answers = append(c.answers, "final: "+err.Error())
		return true
	case errors.Is(err, idempotency.ErrFlowTakenOver):
		c.stale++
	}
	c.errs++
	return false
}

func proxyFaultCase(t *testing.T, b testdb.Backend) {
	ctx := context.Background()
	dsn := b.DSN(t)
	db := b.OpenDSN(t, dsn)
	for _, q := range faultTables {
		db.MustExec(q)
	}
	target, err := scratch.Addr(b.Kind, dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.Start(target)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proxy.Close() }()
	pdsn, err := scratch.Rehost(b.Kind, dsn, proxy.Addr())
	if err != nil {
		t.Fatal(err)
	}

	var (
		ev      flowCounts
		traceMu sync.Mutex
		traces  = map[string][]string{} // each key's events, to print when it fails
	)
	ev.trace = func(e idempotency.FlowEvent) {
		line := fmt.Sprintf("%s token=%d", e.Kind, e.Token)
		if e.Step != "" {
			line += " step=" + e.Step
		}
		if e.Err != nil {
			line += " err=" + e.Err.Error()
		}
		traceMu.Lock()
		traces[e.Key] = append(traces[e.Key], line)
		traceMu.Unlock()
	}
	quiet := idempotency.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	rig, err := openRig(faultDriver(b), pdsn, nil, idempotency.WithLease(proxyLease),
		idempotency.WithCompleterInterval(proxyInterval), idempotency.WithWait(2*proxyLease), ev.hooks(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer rig.close()
	direct, err := openRig(faultDriver(b), dsn, nil, idempotency.WithLease(proxyLease), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.close()

	// The faults: random cuts and delays (some past the lease, so that an
	// owner finds its flow taken over), and a one-shot cut armed in turn.
	proxy.SetChaos(&faultproxy.Chaos{CutProb: 0.01, CommitProb: 0.2, DelayProb: 0.01, MaxDelay: 2 * proxyLease, DropProb: 0.002})
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		for i := 0; i < int(proxyFaults/(100*time.Millisecond)); i++ {
			proxy.Arm(armModes[i%len(armModes)])
			time.Sleep(100 * time.Millisecond)
		}
		proxy.SetChaos(nil)
		proxy.Arm(faultproxy.Pass)
	}()

	cctx, stopCompleter := context.WithCancel(ctx)
	completerDone := make(chan error, 1)
	go func() { completerDone <- rig.complete(cctx) }()

	logs := make([]*clientLog, proxyFlows)
	var wg sync.WaitGroup
	for i := range proxyFlows {
		logs[i] = &clientLog{}
		key, ref := fmt.Sprintf("k%02d", i), fmt.Sprintf("r%02d", i)
		retries := i%2 == 0
		// Twins: half the keys, of each kind of client, have a second
		// client at once.
		clients := 1
		if i%4 < 2 {
			clients = 2
		}
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Duration(rand.IntN(int(proxyFaults/2/time.Millisecond))) * time.Millisecond)
				for attempt := 0; attempt < 200; attempt++ {
					actx, cancel := context.WithTimeout(ctx, 5*time.Second)
					v, err := rig.do(actx, key, ref)
					cancel()
					if logs[i].add(v, err) || !retries {
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
			}()
		}
	}
	wg.Wait()
	<-faultsDone
	stopped := time.Now()

	// With the faults stopped, the completer finishes what the clients that
	// gave up left.
	deadline := stopped.Add(30 * time.Second)
	for count(t, db, `SELECT COUNT(*) FROM idempotency_flows`) != 0 {
		if time.Now().After(deadline) {
			var left []struct {
				Token   int64  `db:"token"`
				Resumes int    `db:"resumes"`
				Err     string `db:"err"`
				Steps   int    `db:"steps"`
			}
			err := db.Select(&left, `SELECT f.token, f.resumes, COALESCE(f.last_error, '') AS err,
				(SELECT COUNT(*) FROM idempotency_steps s WHERE s.scope = f.scope AND s.`+quoteKey(b)+` = f.`+quoteKey(b)+`) AS steps
				FROM idempotency_flows f`)
			t.Fatalf("flows left unfinished 30s after the faults stopped: %+v %v; clients: %d errors", left, err, errorsSeen(logs))
		}
		time.Sleep(20 * time.Millisecond)
	}
	finishedIn := time.Since(stopped)
	stopCompleter()
	if err := <-completerDone; err != nil {
		t.Fatal(err)
	}

	var (
		gaveUp, answers, clientErrs, stale, unanswered, ranAtCheck int
		chargesPerKey                                              = map[int]int{}
	)
	for i := range proxyFlows {
		key, ref := fmt.Sprintf("k%02d", i), fmt.Sprintf("r%02d", i)
		bad := false
		fail := func(format string, args ...any) {
			t.Helper()
			t.Errorf(format, args...)
			bad = true
		}
		res, err := direct.run(ctx, key, ref)
		var final *idempotency.FinalError
		want := res.Value
		orders := count(t, db, fmt.Sprintf(`SELECT COUNT(*) FROM fault_rows WHERE ref = '%s/order'`, ref))
		receipts := count(t, db, fmt.Sprintf(`SELECT COUNT(*) FROM fault_rows WHERE ref = '%s/receipt'`, ref))
		charges := count(t, db, fmt.Sprintf(`SELECT COUNT(*) FROM provider_charges WHERE ref = '%s'`, ref))
		chargesPerKey[charges]++
		switch {
		case errors.As(err, &final):
			// The completer gave up: what was recorded stays, once.
			gaveUp++
			want = "final: " + err.Error()
			if orders > 1 || receipts > 0 || charges > 1 {
				fail("%s gave up with %d order rows, %d receipt rows, %d charges; want at most 1, 0, 1", key, orders, receipts, charges)
			}
		case err != nil:
			fail("%s after the faults: %+v, %v; want its record", key, res, err)
			continue
		case !res.Replayed && len(logs[i].answers) > 0:
			fail("%s after the faults ran the flow again (%+v), though clients got answers", key, res)
		default:
			if !res.Replayed {
				// A client that gave up before its flow's row was written
				// (its first statements cut) left nothing to finish: this
				// run is the flow's first.
				ranAtCheck++
			}
			if orders != 1 || receipts != 1 || charges != 1 {
				fail("%s: %d order rows, %d receipt rows, %d provider charges; want 1 of each", key, orders, receipts, charges)
			}
			if id := charged(t, db, ref); res.Value != "auth-"+id {
				fail("%s answers %q; the provider's charge is %q", key, res.Value, id)
			}
		}
		l := logs[i]
		for _, a := range l.answers {
			if a != want {
				fail("%s: a client got %q; the key replays %q", key, a, want)
			}
		}
		if i%2 == 0 && len(l.answers) == 0 {
			unanswered++
			fail("%s: the retrying client got no answer in 200 tries", key)
		}
		if bad {
			traceMu.Lock()
			t.Logf("%s's events:\n\t%s", key, strings.Join(traces[key], "\n\t"))
			traceMu.Unlock()
		}
		answers += len(l.answers)
		clientErrs += l.errs
		stale += l.stale
	}

	s := proxy.Stats()
	calls := count(t, db, `SELECT COUNT(*) FROM provider_calls`)
	keys := make([]int, 0, len(chargesPerKey))
	for k := range chargesPerKey {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var per []string
	for _, k := range keys {
		per = append(per, fmt.Sprintf("%d keys charged %d times", chargesPerKey[k], k))
	}
	t.Logf("%s: %d flows (%d with a retrying client, %d with one that gives up; 10 with twins), %d answers to clients, %d client errors; "+
		"proxy: %d connections cut (%d mid-statement, %d COMMITs cut before the server, %d after it ran them, %d stalled then dropped, %d delays); "+
		"%d takeovers by retries, %d completer resumes, %d stale owners refused (%d of them seen by clients), %d give-ups, %d never started (run by the check); "+
		"provider: %d calls, %s; all flows finished %v after the faults stopped and the clients returned (lease %v + interval %v)",
		b.Name, proxyFlows, proxyFlows/2, proxyFlows/2, answers, clientErrs,
		proxy.Cuts(), s.CutsMid, s.CommitCutsBefore, s.CommitCutsAfter, s.Drops, s.Delays,
		ev.takenOver.Load(), ev.resumed.Load(), ev.stale.Load(), stale, gaveUp, ranAtCheck,
		calls, strings.Join(per, ", "), finishedIn.Round(time.Millisecond), proxyLease, proxyInterval)
}

// quoteKey is the key column of the flow tables, quoted for b's server.
func quoteKey(b testdb.Backend) string {
	if b.Kind == "mysql" {
		return "`key`"
	}
	return "key"
}

func errorsSeen(logs []*clientLog) int {
	n := 0
	for _, l := range logs {
		l.mu.Lock()
		n += l.errs
		l.mu.Unlock()
	}
	return n
}
