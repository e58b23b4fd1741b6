package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
)

// The workloads, in the order the tables print them.
const (
	wBare        = "bare tx"
	wFloor       = "floor: +1 INSERT"
	wCeiling     = "floor + empty trip"
	wFresh       = "fresh Do"
	wFreshLookup = "fresh Do (ReadFirst)"
	wReplay      = "replay Do"
	wReplayLook  = "replay Do (ReadFirst)"
	wReplayMixed = "replay Do (1 in 10)"
	wByHand      = "by hand: 2 tx + call"
	wFlow        = "flow: 2 steps + call"
	wFlowReplay  = "replay flow"
)

var workloads = []string{wBare, wFloor, wCeiling, wFresh, wFreshLookup, wReplay, wReplayLook, wReplayMixed, wByHand, wFlow, wFlowReplay}

// errUntimed is what an op returns when it succeeded but its latency is not
// the workload's: the fresh calls between the replays of wReplayMixed.
var errUntimed = errors.New("untimed")

// receipt is what fn returns: small, like a payment's answer.
type receipt struct {
	Ref    string `json:"ref"`
	Amount int64  `json:"amount"`
}

// request is the params of every call: equal params, so replays match.
type request struct {
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
}

var params = request{Amount: 100, Currency: "EUR"}

// bench is one backend's open client and keys.
type bench struct {
	b      *backend
	c      client
	prefix string
	seq    atomic.Int64
	replay []string // committed keys
	flows  []string // keys of finished flows
	fp     []byte
}

func newBench(b *backend, c client) (*bench, error) {
	fp, err := idempotency.Fingerprint(params)
	if err != nil {
		return nil, err
	}
	return &bench{b: b, c: c, prefix: scratch.Name("bench_") + "-", fp: fp}, nil
}

func (w *bench) newKey() string {
	return w.prefix + strconv.FormatInt(w.seq.Add(1), 10)
}

// seed commits n keys for the replay workloads.
func (w *bench) seed(ctx context.Context, n int) error {
	for range n {
		k := w.newKey()
		if _, err := w.c.run(ctx, false, k, 0, nil); err != nil {
			return err
		}
		w.replay = append(w.replay, k)
		k = w.newKey()
		if _, err := w.c.flow(ctx, k); err != nil {
			return err
		}
		w.flows = append(w.flows, k)
	}
	return nil
}

// replay returns a call that replays a committed key.
func (w *bench) replayOp(readFirst bool) func(ctx context.Context, i int) error {
	return func(ctx context.Context, i int) error {
		key := w.replay[i%len(w.replay)]
		r, err := w.c.run(ctx, readFirst, key, 0, nil)
		if err == nil && !r.Replayed {
			err = fmt.Errorf("key %s was not replayed", key)
		}
		return err
	}
}

// op returns the function one call of workload name runs; i numbers calls.
func (w *bench) op(name string) func(ctx context.Context, i int) error {
	switch name {
	case wBare:
		return func(ctx context.Context, i int) error { return w.c.bare(ctx, w.newKey()) }
	case wFloor, wCeiling:
		// The floor is the physical limit: the business row plus one
		// INSERT of the key with its value, no claim. Not a protocol (twins
		// would both run). The ceiling adds a statement that does nothing:
		// what any protocol costs that needs one round trip more than the
		// floor, as a claim before fn does through database/sql.
		empty := name == wCeiling
		return func(ctx context.Context, i int) error {
			key := w.newKey()
			v, err := json.Marshal(receipt{Ref: key, Amount: params.Amount})
			if err != nil {
				return err
			}
			return w.c.floor(ctx, empty, key, w.fp, v)
		}
	case wFresh, wFreshLookup:
		return func(ctx context.Context, i int) error {
			_, err := w.c.run(ctx, name == wFreshLookup, w.newKey(), 0, nil)
			return err
		}
	case wByHand:
		return func(ctx context.Context, i int) error { return w.c.byHand(ctx, w.newKey()) }
	case wFlow:
		return func(ctx context.Context, i int) error {
			key := w.newKey()
			r, err := w.c.flow(ctx, key)
			if err == nil && r.Replayed {
				err = fmt.Errorf("the new flow %s was replayed", key)
			}
			return err
		}
	case wFlowReplay:
		return func(ctx context.Context, i int) error {
			key := w.flows[i%len(w.flows)]
			r, err := w.c.flow(ctx, key)
			if err == nil && !r.Replayed {
				err = fmt.Errorf("the flow %s was not replayed", key)
			}
			return err
		}
	case wReplay:
		return w.replayOp(false)
	case wReplayLook:
		return w.replayOp(true)
	case wReplayMixed:
		// A replay among fresh calls, as retries come in ordinary
		// traffic, with the store's default options: only the replays
		// are timed.
		replay := w.replayOp(false)
		return func(ctx context.Context, i int) error {
			if i%10 != 9 {
				_, err := w.c.run(ctx, false, w.newKey(), 0, nil)
				if err == nil {
					err = errUntimed
				}
				return err
			}
			return replay(ctx, i)
		}
	}
	panic("unknown workload " + name)
}

// sample is one phase's measurement.
type sample struct {
	opsPerSec float64
	p50, p99  time.Duration
	allocs    float64       // heap allocations per op (whole process)
	cpu       time.Duration // the bench process's CPU time per op
	serverCPU time.Duration // the server's per op, where it can be read (0: not)
}

// phase runs ops calls of op on c workers and measures them; server, if not
// nil, reads the server's CPU time.
func phase(ctx context.Context, c, ops int, op func(context.Context, int) error, server func() time.Duration) (sample, error) {
	lat := make([]time.Duration, ops)
	timed := make([]bool, ops)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr error
		errOnce  sync.Once
	)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpu0, srv0 := processCPU(), readCPU(server)
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= ops {
					return
				}
				t := time.Now()
				err := op(ctx, i)
				if errors.Is(err, errUntimed) {
					continue
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					next.Store(int64(ops))
					return
				}
				lat[i], timed[i] = time.Since(t), true
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, srv1 := processCPU(), readCPU(server)
	runtime.ReadMemStats(&after)
	if firstErr != nil {
		return sample{}, firstErr
	}
	var kept []time.Duration
	for i, ok := range timed {
		if ok {
			kept = append(kept, lat[i])
		}
	}
	slices.Sort(kept)
	s := sample{
		opsPerSec: float64(ops) / elapsed.Seconds(),
		allocs:    float64(after.Mallocs-before.Mallocs) / float64(ops),
		cpu:       (cpu1 - cpu0) / time.Duration(ops),
	}
	if len(kept) > 0 { // a short warm-up of wReplayMixed may time no call
		s.p50, s.p99 = kept[len(kept)/2], kept[min(len(kept)-1, len(kept)*99/100)]
	}
	if server != nil {
		s.serverCPU = (srv1 - srv0) / time.Duration(ops)
	}
	return s, nil
}

func readCPU(f func() time.Duration) time.Duration {
	if f == nil {
		return 0
	}
	return f()
}

// stormSample is one duplicate storm.
type stormSample struct {
	winner                time.Duration
	p50, p99, max         time.Duration
	fnRuns, errs, winners int
	firstErr              error
	key                   string
	rows                  int // business rows committed for key

}

// storm releases n calls on one key at once through c. fn inserts the
// business row and then takes work, as a normal write would.
func storm(ctx context.Context, w *bench, c client, n int, work time.Duration) stormSample {
	key := w.newKey()
	var (
		fnRuns atomic.Int64
		wg     sync.WaitGroup
		ready  sync.WaitGroup
		mu     sync.Mutex
		out    stormSample
		losers []time.Duration
	)
	start := make(chan struct{})
	var t0 time.Time
	for range n {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-start
			r, err := c.run(ctx, false, key, work, &fnRuns)
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				out.errs++
				if out.firstErr == nil {
					out.firstErr = err
				}
			case r.Replayed:
				losers = append(losers, d)
			default:
				out.winners++
				out.winner = d
			}
		}()
	}
	ready.Wait()
	t0 = time.Now()
	close(start)
	wg.Wait()
	out.fnRuns = int(fnRuns.Load())
	out.key = key
	if len(losers) > 0 {
		slices.Sort(losers)
		out.p50 = losers[len(losers)/2]
		out.p99 = losers[min(len(losers)-1, len(losers)*99/100)]
		out.max = losers[len(losers)-1]
	}
	return out
}
