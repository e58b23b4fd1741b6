package conformance

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
)

// runCompleter runs RunCompleter on s with flows until the test ends.
func runCompleter[TTx any](t *testing.T, s *idempotency.TxStore[TTx], flows ...idempotency.Resumable[TTx]) {
	t.Helper()
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- idempotency.RunCompleter(cctx, s, flows...) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunCompleter: %v", err)
		}
	})
}

// waitFinished waits until no flow rows are left, or fails t.
func waitFinished[TTx any](t *testing.T, e *suite[TTx], within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		flows, steps := flowRows(t, e)
		if flows == 0 && steps == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %d flows and %d steps are still there", within, flows, steps)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testFlowCompleterFinishesAbandoned: flows whose clients went away, one
// after an error and one whose owner hangs past its lease, are finished by
// the completer with their stored params and scope; the hung owner then
// records nothing.
func testFlowCompleterFinishesAbandoned[TTx any](t *testing.T, e *suite[TTx]) {
	var ev flowEvents
	base := e.store(t, idempotency.WithLease(300*time.Millisecond), idempotency.WithCompleterInterval(20*time.Millisecond), ev.hooks())
	s := base.Scope("acme")
	c := newCheckout(e, "checkout")
	errDown := errors.New("provider unreachable")
	var failed atomic.Bool
	c.p.fail = func(string) error {
		if failed.CompareAndSwap(false, true) {
			return errDown
		}
		return nil
	}
	// The client of a1 gives up after the first error.
	if _, err := c.flow.Do(ctx, s, "a1", order{Ref: "a1", Amount: 30}); !errors.Is(err, errDown) {
		t.Fatalf("a1: %v; want the provider's error", err)
	}
	// The owner of a2 hangs between steps.
	held, release := make(chan struct{}), make(chan struct{})
	var holds atomic.Int64
	c.beforeReceipt = func(context.Context) {
		if holds.Add(1) == 1 {
			close(held)
			<-release
		}
	}
	hung := make(chan error, 1)
	go func() {
		_, err := c.flow.Do(ctx, s, "a2", order{Ref: "a2", Amount: 40})
		hung <- err
	}()
	select {
	case <-held:
	case err := <-hung:
		t.Fatalf("a2's owner ended before it hung: %v", err)
	}
	runCompleter(t, base, c.flow)
	waitFinished(t, e, 20*time.Second)
	close(release)
	if err := <-hung; !errors.Is(err, idempotency.ErrFlowTakenOver) {
		t.Errorf("the hung owner: %v; want ErrFlowTakenOver", err)
	}
	for _, k := range []struct {
		key    string
		amount int
	}{{"a1", 30}, {"a2", 40}} {
		r, err := c.flow.Run(ctx, s, k.key, order{Ref: k.key, Amount: k.amount})
		if err != nil || !r.Replayed || r.Value.Amount != k.amount {
			t.Errorf("%s after the completer: %+v, %v; want its receipt of %d, replayed", k.key, r, err, k.amount)
		}
		if e.charges(t, k.key+"/order") != 1 || e.charges(t, k.key+"/receipt") != 1 {
			t.Errorf("%s: %d order rows, %d receipt rows; want 1 and 1 (the receipt's ref comes from the stored params)",
				k.key, e.charges(t, k.key+"/order"), e.charges(t, k.key+"/receipt"))
		}
	}
	if n := e.env.Count(t, `SELECT COUNT(*) FROM idempotency_keys WHERE scope = 'acme'`); n != 2 {
		t.Errorf("%d records in scope acme; want 2 (the completer runs a flow in its stored scope)", n)
	}
	if _, _, charged := c.p.counts(); charged != 2 {
		t.Errorf("the provider charged %d times; want once per key, 2", charged)
	}
	if ev.count(idempotency.FlowResumed) != 2 {
		t.Errorf("events: %v; want 2 resumes", ev.n)
	}
}

// testFlowCompletersResumeEachOnce: two completers at once resume each
// abandoned flow once.
func testFlowCompletersResumeEachOnce[TTx any](t *testing.T, e *suite[TTx]) {
	const flows = 12
	var ev flowEvents
	hooks := ev.hooks()
	s := e.store(t, idempotency.WithCompleterInterval(10*time.Millisecond), hooks)
	c := newCheckout(e, "checkout")
	var mu sync.Mutex
	failedOnce := map[string]bool{}
	errDown := errors.New("provider unreachable")
	c.p.fail = func(key string) error {
		mu.Lock()
		defer mu.Unlock()
		if !failedOnce[key] {
			failedOnce[key] = true
			return errDown
		}
		return nil
	}
	for i := range flows {
		ref := "c" + string(rune('a'+i))
		if _, err := c.flow.Do(ctx, s, ref, order{Ref: ref, Amount: i}); !errors.Is(err, errDown) {
			t.Fatalf("%s: %v; want the provider's error", ref, err)
		}
	}
	other := e.store(t, idempotency.WithCompleterInterval(10*time.Millisecond), hooks)
	runCompleter(t, s, c.flow)
	runCompleter(t, other, c.flow)
	waitFinished(t, e, 30*time.Second)
	if n := c.receipts.Load(); n != flows {
		t.Errorf("the receipt step ran %d times; want %d, once per flow", n, flows)
	}
	if n := ev.count(idempotency.FlowResumed); n != flows {
		t.Errorf("%d resumes; want %d, one per flow", n, flows)
	}
	keys, _, charged := c.p.counts()
	if keys != flows || charged != flows {
		t.Errorf("the provider saw %d keys and charged %d times; want %d and %d", keys, charged, flows, flows)
	}
	if n := e.env.Count(t, `SELECT COUNT(*) FROM charges WHERE ref LIKE '%/receipt'`); n != flows {
		t.Errorf("%d receipt rows; want %d", n, flows)
	}
}

// testFlowCompleterGivesUp: a flow that keeps failing is resumed a bounded
// number of times, with backoff, then its key gets a final failure that
// retries replay, and the hooks hear of it.
func testFlowCompleterGivesUp[TTx any](t *testing.T, e *suite[TTx]) {
	var ev flowEvents
	s := e.store(t, idempotency.WithCompleterInterval(5*time.Millisecond), ev.hooks())
	c := newCheckout(e, "checkout")
	errDown := errors.New("provider unreachable")
	c.p.fail = func(string) error { return errDown }
	o := order{Ref: "g1", Amount: 3}
	if _, err := c.flow.Do(ctx, s, "g1", o); !errors.Is(err, errDown) {
		t.Fatalf("got %v; want the provider's error", err)
	}
	runCompleter(t, s, c.flow)
	waitFinished(t, e, 30*time.Second)
	r, err := c.flow.Run(ctx, s, "g1", o)
	var fe *idempotency.FinalError
	if !errors.As(err, &fe) || fe.Code != idempotency.GaveUpCode || !r.Replayed || !strings.Contains(err.Error(), errDown.Error()) {
		t.Fatalf("after the give-up: %+v, %v; want a final failure with Code %q and the last error, replayed", r, err, idempotency.GaveUpCode)
	}
	_, asked, _ := c.p.counts()
	if ev.await(idempotency.FlowGaveUp, 1) != 1 || ev.count(idempotency.FlowResumed) != 5 || asked != 6 {
		t.Errorf("events %v, provider asked %d times; want 5 resumes, 1 give-up, 6 calls", ev.n, asked)
	}
	if c.orders.Load() != 1 || e.charges(t, "g1/order") != 1 {
		t.Errorf("the order step ran %d times; want 1", c.orders.Load())
	}
}
