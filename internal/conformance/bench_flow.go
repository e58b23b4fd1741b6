package conformance

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
)

// BenchmarkFlow compares a flow of two steps and one call with the same
// work done by hand (two bare transactions that each insert a charge, and
// the call between them), with 1 caller on a pool of one connection and
// with 16 callers on a pool of 16; and a replay of a finished flow with a
// replay of Do. The call does nothing: what is measured is what the flow
// adds. It prints the flow's throughput as a share of the hand-written
// work's, and the replays' costs, from the same run.
func BenchmarkFlow[TTx any](b *testing.B, h Harness[TTx]) {
	base := h.Open(b)
	var seq atomic.Int64
	key := func() string { return "flow-" + strconv.FormatInt(seq.Add(1), 10) }
	call := func(context.Context, string) (int, error) { return 1, nil }
	perOp := map[string]time.Duration{}
	for _, callers := range []int{1, 16} {
		e := base.Reopen(b, Pool{MaxConns: callers})
		bare := func(b *testing.B, ref string) {
			tx, err := e.Begin(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := e.Charge(ctx, tx, ref, 1); err != nil {
				_ = e.Rollback(ctx, tx)
				b.Fatal(err)
			}
			if err := e.Commit(ctx, tx); err != nil {
				b.Fatal(err)
			}
		}
		s := e.NewStore(b)
		f := idempotency.NewFlow("bench", func(ctx context.Context, st *idempotency.Steps[TTx], k string) (int, error) {
			if _, err := idempotency.Step(st, "a", func(ctx context.Context, tx TTx) (int, error) { return 1, e.Charge(ctx, tx, k+"/a", 1) }); err != nil {
				return 0, err
			}
			if _, err := idempotency.Call(st, "call", call); err != nil {
				return 0, err
			}
			return idempotency.Step(st, "b", func(ctx context.Context, tx TTx) (int, error) { return 1, e.Charge(ctx, tx, k+"/b", 1) })
		})
		work := map[string]func(b *testing.B){
			"by hand": func(b *testing.B) {
				k := key()
				bare(b, k+"/a")
				if _, err := call(ctx, k); err != nil {
					b.Fatal(err)
				}
				bare(b, k+"/b")
			},
			"flow": func(b *testing.B) {
				k := key()
				if _, err := f.Do(ctx, s, k, k); err != nil {
					b.Fatal(err)
				}
			},
		}
		for _, name := range []string{"by hand", "flow"} {
			name, w := name+" "+strconv.Itoa(callers), work[name]
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				if callers == 1 {
					for b.Loop() {
						w(b)
					}
				} else {
					// RunParallel starts GOMAXPROCS × parallelism goroutines.
					b.SetParallelism((callers + max(1, runtimeProcs()) - 1) / max(1, runtimeProcs()))
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							w(b)
						}
					})
				}
				perOp[name] = b.Elapsed() / time.Duration(max(b.N, 1))
			})
		}
		if callers != 1 {
			continue
		}
		b.Run("flow replay", func(b *testing.B) {
			k := key()
			if _, err := f.Do(ctx, s, k, k); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if r, err := f.Run(ctx, s, k, k); err != nil || !r.Replayed {
					b.Fatalf("replay: %v, replayed %v", err, r.Replayed)
				}
			}
			perOp["flow replay"] = b.Elapsed() / time.Duration(max(b.N, 1))
		})
		b.Run("Do replay", func(b *testing.B) {
			k := key()
			fn := func(ctx context.Context, tx TTx) (int, error) { return 1, e.Charge(ctx, tx, k, 1) }
			if _, err := idempotency.Do(ctx, s, k, k, fn); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if r, err := idempotency.Run(ctx, s, k, k, fn); err != nil || !r.Replayed {
					b.Fatalf("replay: %v, replayed %v", err, r.Replayed)
				}
			}
			perOp["Do replay"] = b.Elapsed() / time.Duration(max(b.N, 1))
		})
	}
	ratio := func(num, den string) string {
		if perOp[num] == 0 || perOp[den] == 0 {
			return "-"
		}
		return strconv.FormatFloat(float64(perOp[num])/float64(perOp[den]), 'f', 2, 64)
	}
	fmt.Printf("\ncallers  by hand/op  flow/op  flow throughput / by hand (target ≥ 0.70)\n"+
		"1        %-10v %-8v %s\n16       %-10v %-8v %s\nreplay: flow %v, Do %v per op (flow/Do %s)\n\n",
		perOp["by hand 1"], perOp["flow 1"], ratio("by hand 1", "flow 1"),
		perOp["by hand 16"], perOp["flow 16"], ratio("by hand 16", "flow 16"),
		perOp["flow replay"], perOp["Do replay"], ratio("flow replay", "Do replay"))
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
