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

// order is the params of the suite's checkout flow.
type order struct {
	Ref    string `json:"ref"`
	Amount int    `json:"amount"`
}

// auth is a provider's answer to an authorization.
type auth struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// provider is a fake payment provider that honours keys: the first answer
// to a key is stored and given to every repeat, and it counts what it was
// asked, by key.
type provider struct {
	mu      sync.Mutex
	answers map[string]auth
	asked   map[string]int
	charged map[string]int // keys it acted on: once per key, if keys are honoured
	// fail, if set, answers instead of acting (a network error, a decline).
	fail func(key string) error
}

func newProvider() *provider {
	return &provider{answers: map[string]auth{}, asked: map[string]int{}, charged: map[string]int{}}
}

func (p *provider) authorize(ctx context.Context, key string, amount int) (auth, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.asked[key]++
	if p.fail != nil {
		if err := p.fail(key); err != nil {
			return auth{}, err
		}
	}
	if a, ok := p.answers[key]; ok {
		return a, nil
	}
	p.charged[key]++
	a := auth{ID: "auth_" + key[:8], Amount: amount}
	p.answers[key] = a
	return a, nil
}

func (p *provider) counts() (keys, asked, charged int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.asked {
		asked += n
	}
	for _, n := range p.charged {
		charged += n
	}
	return len(p.asked), asked, charged
}

// checkout is the suite's flow: a step that writes the order, a call to
// the provider, a step that writes the receipt. Its knobs let a test fail
// or hold a run between steps.
type checkout[TTx any] struct {
	e        *suite[TTx]
	p        *provider
	flow     *idempotency.Flow[order, receipt, TTx]
	orders   atomic.Int64 // runs of the order step's fn
	receipts atomic.Int64 // runs of the receipt step's fn
	// beforeReceipt, if set, runs between the call and the last step.
	beforeReceipt func(ctx context.Context)
}

func newCheckout[TTx any](e *suite[TTx], name string) *checkout[TTx] {
	c := &checkout[TTx]{e: e, p: newProvider()}
	c.flow = idempotency.NewFlow(name, func(ctx context.Context, s *idempotency.Steps[TTx], o order) (receipt, error) {
		if _, err := idempotency.Step(s, "order", func(ctx context.Context, tx TTx) (int, error) {
			c.orders.Add(1)
			return o.Amount, e.env.Charge(ctx, tx, o.Ref+"/order", o.Amount)
		}); err != nil {
			return receipt{}, err
		}
		a, err := idempotency.Call(s, "authorize", func(ctx context.Context, key string) (auth, error) {
			return c.p.authorize(ctx, key, o.Amount)
		})
		if err != nil {
			return receipt{}, err
		}
		if c.beforeReceipt != nil {
			c.beforeReceipt(ctx)
		}
		return idempotency.Step(s, "receipt", func(ctx context.Context, tx TTx) (receipt, error) {
			c.receipts.Add(1)
			if err := e.env.Charge(ctx, tx, o.Ref+"/receipt", a.Amount); err != nil {
				return receipt{}, err
			}
			return receipt{ID: a.ID, Amount: a.Amount, At: time.Now().UTC()}, nil
		})
	})
	return c
}

// flowRows counts the rows of the flow tables: running and abandoned flows
// and their steps.
func flowRows[TTx any](t testing.TB, e *suite[TTx]) (flows, steps int) {
	t.Helper()
	return e.env.Count(t, `SELECT COUNT(*) FROM idempotency_flows`), e.env.Count(t, `SELECT COUNT(*) FROM idempotency_steps`)
}

// flowEvents counts a store's flow events by kind.
type flowEvents struct {
	mu sync.Mutex
	n  map[idempotency.FlowEventKind]int
}

func (f *flowEvents) hooks() idempotency.Option {
	f.n = map[idempotency.FlowEventKind]int{}
	return idempotency.WithHooks(idempotency.Hooks{Flow: func(_ context.Context, e idempotency.FlowEvent) {
		f.mu.Lock()
		f.n[e.Kind]++
		f.mu.Unlock()
	}})
}

func (f *flowEvents) count(k idempotency.FlowEventKind) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n[k]
}

// await waits, a bounded time, until at least n events of kind k came: a
// hook runs after the commit it reports, so a test that saw the commit
// may not have heard of it yet.
func (f *flowEvents) await(k idempotency.FlowEventKind, n int) int {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if c := f.count(k); c >= n {
			return c
		}
	}
	return f.count(k)
}

// testFlowFreshThenReplay: a new key runs each step once and stores the
// value under the key, leaving no flow rows; the same key replays the same
// value without running anything, at a Do replay's cost (the key's record).
func testFlowFreshThenReplay[TTx any](t *testing.T, e *suite[TTx]) {
	var ev flowEvents
	s := e.store(t, ev.hooks())
	c := newCheckout(e, "checkout")
	o := order{Ref: "f1", Amount: 250}
	first, err := c.flow.Run(ctx, s, "f1", o)
	if err != nil {
		t.Fatal(err)
	}
	if first.Replayed || first.Value.Amount != 250 || first.Value.ID == "" {
		t.Fatalf("first run: %+v; want a fresh receipt of 250", first)
	}
	again, err := c.flow.Run(ctx, s, "f1", o)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Replayed || again.Value != first.Value {
		t.Errorf("replay: %+v; want the first value %+v, replayed", again, first)
	}
	if v, err := c.flow.Do(ctx, s, "f1", o); err != nil || v != first.Value {
		t.Errorf("Do: %+v, %v; want the first value", v, err)
	}
	keys, asked, charged := c.p.counts()
	if c.orders.Load() != 1 || c.receipts.Load() != 1 || keys != 1 || asked != 1 || charged != 1 {
		t.Errorf("order ran %d, receipt %d, provider asked %d times under %d keys, charged %d; want 1 each",
			c.orders.Load(), c.receipts.Load(), asked, keys, charged)
	}
	if e.charges(t, "f1/order") != 1 || e.charges(t, "f1/receipt") != 1 {
		t.Error("each step's business row should exist once")
	}
	if flows, steps := flowRows(t, e); flows != 0 || steps != 0 || e.keys(t) != 1 {
		t.Errorf("%d flow rows, %d step rows, %d keys after the flow finished; want 0, 0, 1", flows, steps, e.keys(t))
	}
	if ev.count(idempotency.FlowStarted) != 1 || ev.count(idempotency.FlowStepRecorded) != 3 || ev.count(idempotency.FlowFinished) != 1 {
		t.Errorf("events: %v; want 1 start, 3 steps recorded, 1 finish", ev.n)
	}
}

// testFlowResumesAfterError: a call that fails leaves the flow resumable
// with its first step recorded; a retry replays that step without running
// it, calls the provider again with the same key, and finishes.
func testFlowResumesAfterError[TTx any](t *testing.T, e *suite[TTx]) {
	var ev flowEvents
	s := e.store(t, ev.hooks())
	c := newCheckout(e, "checkout")
	errDown := errors.New("provider unreachable")
	var failed atomic.Bool
	c.p.fail = func(string) error {
		if failed.CompareAndSwap(false, true) {
			return errDown
		}
		return nil
	}
	o := order{Ref: "r1", Amount: 90}
	if _, err := c.flow.Do(ctx, s, "r1", o); !errors.Is(err, errDown) {
		t.Fatalf("first run: %v; want the call's error unchanged", err)
	}
	if flows, steps := flowRows(t, e); flows != 1 || steps != 1 || e.keys(t) != 0 {
		t.Fatalf("after the failed call: %d flow rows, %d steps, %d keys; want 1, 1, 0", flows, steps, e.keys(t))
	}
	r, err := c.flow.Run(ctx, s, "r1", o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Replayed || r.Value.Amount != 90 {
		t.Errorf("resumed run: %+v; want a fresh receipt of 90", r)
	}
	keys, asked, charged := c.p.counts()
	if c.orders.Load() != 1 || c.receipts.Load() != 1 || keys != 1 || asked != 2 || charged != 1 {
		t.Errorf("order ran %d, receipt %d; provider asked %d times under %d keys, charged %d; want 1, 1, 2 under 1, 1",
			c.orders.Load(), c.receipts.Load(), asked, keys, charged)
	}
	if e.charges(t, "r1/order") != 1 || e.charges(t, "r1/receipt") != 1 {
		t.Error("each step's business row should exist once")
	}
	if ev.count(idempotency.FlowStepReplayed) != 1 || ev.count(idempotency.FlowStopped) != 1 || ev.count(idempotency.FlowTakenOver) != 1 {
		t.Errorf("events: %v; want 1 step replayed, 1 stop, 1 takeover", ev.n)
	}
	if flows, steps := flowRows(t, e); flows != 0 || steps != 0 {
		t.Errorf("%d flow rows, %d steps after the flow finished; want none", flows, steps)
	}
}

// testFlowFinalIsStored: a final failure ends the flow: it is stored under
// the key and replayed, code and message, without running anything.
func testFlowFinalIsStored[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	c := newCheckout(e, "checkout")
	c.p.fail = func(string) error { return idempotency.FinalCode("card_declined", errDeclined) }
	o := order{Ref: "d1", Amount: 5}
	_, err := c.flow.Do(ctx, s, "d1", o)
	var fe *idempotency.FinalError
	if !errors.As(err, &fe) || fe.Code != "card_declined" || !errors.Is(err, errDeclined) {
		t.Fatalf("first run: %v; want the final failure itself", err)
	}
	r, err := c.flow.Run(ctx, s, "d1", o)
	if !errors.As(err, &fe) || fe.Code != "card_declined" || err.Error() != errDeclined.Error() || !r.Replayed {
		t.Fatalf("retry: %+v, %v; want the stored final failure, replayed", r, err)
	}
	_, asked, _ := c.p.counts()
	if asked != 1 || c.orders.Load() != 1 || c.receipts.Load() != 0 {
		t.Errorf("provider asked %d times, order ran %d, receipt %d; want 1, 1, 0", asked, c.orders.Load(), c.receipts.Load())
	}
	if flows, steps := flowRows(t, e); flows != 0 || steps != 0 || e.keys(t) != 1 {
		t.Errorf("%d flow rows, %d steps, %d keys; want 0, 0, 1", flows, steps, e.keys(t))
	}
}

// testFlowParamsMismatch: other params, or another flow, under a key that
// a flow holds (running or finished) is ErrParamsMismatch, and runs
// nothing.
func testFlowParamsMismatch[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	c := newCheckout(e, "checkout")
	if _, err := c.flow.Do(ctx, s, "m1", order{Ref: "m1", Amount: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.flow.Do(ctx, s, "m1", order{Ref: "m1", Amount: 2}); !errors.Is(err, idempotency.ErrParamsMismatch) {
		t.Errorf("finished flow, other params: %v; want ErrParamsMismatch", err)
	}
	other := newCheckout(e, "refund")
	if _, err := other.flow.Do(ctx, s, "m1", order{Ref: "m1", Amount: 1}); !errors.Is(err, idempotency.ErrParamsMismatch) {
		t.Errorf("finished flow, another flow's name: %v; want ErrParamsMismatch", err)
	}
	// A running (stopped, resumable) flow.
	c.p.fail = func(string) error { return errDeclined }
	if _, err := c.flow.Do(ctx, s, "m2", order{Ref: "m2", Amount: 1}); !errors.Is(err, errDeclined) {
		t.Fatalf("got %v; want the call's error", err)
	}
	if _, err := c.flow.Do(ctx, s, "m2", order{Ref: "m2", Amount: 3}); !errors.Is(err, idempotency.ErrParamsMismatch) {
		t.Errorf("running flow, other params: %v; want ErrParamsMismatch", err)
	}
	if c.orders.Load() != 2 {
		t.Errorf("the order step ran %d times; want 2 (once per key)", c.orders.Load())
	}
}

// testFlowTwinWaitsThenReplays: a retry while the owner's lease is alive
// waits and replays the owner's value; with no wait it is ErrInProgress.
func testFlowTwinWaitsThenReplays[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t, idempotency.WithWait(20*time.Second))
	c := newCheckout(e, "checkout")
	held, release := make(chan struct{}), make(chan struct{})
	c.beforeReceipt = func(context.Context) {
		close(held)
		<-release
	}
	o := order{Ref: "t1", Amount: 7}
	owner := make(chan error, 1)
	var first receipt
	go func() {
		var err error
		first, err = c.flow.Do(ctx, s, "t1", o)
		owner <- err
	}()
	select {
	case <-held:
	case err := <-owner:
		t.Fatalf("the owner ended before it was held: %v", err)
	}
	noWait := e.store(t, idempotency.WithWait(0))
	if _, err := c.flow.Do(ctx, noWait, "t1", o); !errors.Is(err, idempotency.ErrInProgress) {
		t.Errorf("a twin that does not wait: %v; want ErrInProgress", err)
	}
	twin := make(chan idempotency.Result[receipt], 1)
	twinErr := make(chan error, 1)
	go func() {
		r, err := c.flow.Run(ctx, s, "t1", o)
		twin <- r
		twinErr <- err
	}()
	// The twin polls meanwhile, more than a hundred times (pauses grow
	// to 32ms): a long wait is bounded by WithWait alone.
	time.Sleep(3500 * time.Millisecond)
	close(release)
	if err := <-owner; err != nil {
		t.Fatal(err)
	}
	r := <-twin
	if err := <-twinErr; err != nil || !r.Replayed || r.Value != first {
		t.Errorf("twin: %+v, %v; want the owner's value %+v, replayed", r, err, first)
	}
	if c.orders.Load() != 1 || c.receipts.Load() != 1 || e.charges(t, "t1/receipt") != 1 {
		t.Errorf("order ran %d, receipt %d; want 1 each", c.orders.Load(), c.receipts.Load())
	}
}

// testFlowTakeoverFencesStaleOwner: an owner held between steps past its
// lease loses the flow to a retry, which resumes it (the recorded steps do
// not run again) and finishes it; the stale owner's next step is refused
// with ErrFlowTakenOver, and its fn's writes do not commit.
func testFlowTakeoverFencesStaleOwner[TTx any](t *testing.T, e *suite[TTx]) {
	const lease = 400 * time.Millisecond
	var ev flowEvents
	s := e.store(t, idempotency.WithLease(lease), idempotency.WithWait(20*time.Second), ev.hooks())
	c := newCheckout(e, "checkout")
	held, release := make(chan struct{}), make(chan struct{})
	var holds atomic.Int64
	c.beforeReceipt = func(context.Context) {
		if holds.Add(1) == 1 { // the first owner only
			close(held)
			<-release
		}
	}
	o := order{Ref: "s1", Amount: 11}
	stale := make(chan error, 1)
	go func() {
		_, err := c.flow.Do(ctx, s, "s1", o)
		stale <- err
	}()
	select {
	case <-held:
	case err := <-stale:
		t.Fatalf("the first owner ended before it was held: %v", err)
	}
	// The retry finds the lease alive, waits it out, takes over.
	r, err := c.flow.Run(ctx, s, "s1", o)
	if err != nil || r.Replayed || r.Value.Amount != 11 {
		t.Fatalf("the retry: %+v, %v; want a fresh receipt of 11", r, err)
	}
	close(release)
	if err := <-stale; !errors.Is(err, idempotency.ErrFlowTakenOver) {
		t.Fatalf("the stale owner: %v; want ErrFlowTakenOver", err)
	}
	keys, asked, charged := c.p.counts()
	if c.orders.Load() != 1 || e.charges(t, "s1/order") != 1 || e.charges(t, "s1/receipt") != 1 {
		t.Errorf("order ran %d; %d order rows, %d receipt rows; want 1 each", c.orders.Load(), e.charges(t, "s1/order"), e.charges(t, "s1/receipt"))
	}
	// The call is recorded with the next step where steps leave their
	// transactions open (Postgres, SQLite), and the owner was held before
	// that step: the retry asks again, under the same key, and the
	// provider answers as the first time. Elsewhere it was recorded before.
	if keys != 1 || asked < 1 || asked > 2 || charged != 1 {
		t.Errorf("provider asked %d times under %d keys, charged %d; want once or twice under 1 key, charged once", asked, keys, charged)
	}
	if ev.count(idempotency.FlowTakenOver) != 1 || ev.count(idempotency.FlowStepReplayed) != int(3-asked) {
		t.Errorf("events: %v; want 1 takeover, %d steps replayed", ev.n, 3-asked)
	}
	// The stale owner's Step ran no fn, or rolled it back: one receipt row.
	again, err := c.flow.Run(ctx, s, "s1", o)
	if err != nil || !again.Replayed || again.Value != r.Value {
		t.Errorf("after both: %+v, %v; want the retry's value replayed", again, err)
	}
}

// testFlowStepOrder: a run whose steps differ from those recorded (another
// order, a name used twice) fails with ErrStepOrder naming the step, and
// records nothing.
func testFlowStepOrder[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	step := func(name string) func(*idempotency.Steps[TTx]) error {
		return func(st *idempotency.Steps[TTx]) error {
			_, err := idempotency.Step(st, name, func(ctx context.Context, tx TTx) (string, error) {
				return name, e.env.Charge(ctx, tx, st.Key()+"/"+name, 1)
			})
			return err
		}
	}
	var plan atomic.Value // []func(*Steps) error, then an error to stop with
	f := idempotency.NewFlow("ordered", func(ctx context.Context, st *idempotency.Steps[TTx], _ int) (int, error) {
		for _, s := range plan.Load().([]func(*idempotency.Steps[TTx]) error) {
			if err := s(st); err != nil {
				return 0, err
			}
		}
		return 1, nil
	})
	stop := func(*idempotency.Steps[TTx]) error { return errDeclined }

	plan.Store([]func(*idempotency.Steps[TTx]) error{step("a"), step("b"), stop})
	if _, err := f.Do(ctx, s, "o1", 0); !errors.Is(err, errDeclined) {
		t.Fatalf("got %v; want the stop", err)
	}
	plan.Store([]func(*idempotency.Steps[TTx]) error{step("b"), step("a")})
	_, err := f.Do(ctx, s, "o1", 0)
	if !errors.Is(err, idempotency.ErrStepOrder) || !containsAll(err.Error(), `"b"`, `"a"`) {
		t.Errorf("steps in another order: %v; want ErrStepOrder naming both steps", err)
	}
	plan.Store([]func(*idempotency.Steps[TTx]) error{step("a")})
	if _, err := f.Do(ctx, s, "o1", 0); !errors.Is(err, idempotency.ErrStepOrder) {
		t.Errorf("fewer steps than recorded: %v; want ErrStepOrder", err)
	}
	plan.Store([]func(*idempotency.Steps[TTx]) error{step("x"), step("x")})
	_, err = f.Do(ctx, s, "o2", 0)
	if !errors.Is(err, idempotency.ErrStepOrder) || !containsAll(err.Error(), `"x"`) {
		t.Errorf("a name used twice: %v; want ErrStepOrder naming it", err)
	}
	if e.charges(t, "o1/a") != 1 || e.charges(t, "o1/b") != 1 || e.charges(t, "o2/x") != 1 {
		t.Error("a step ran again, or a refused step wrote")
	}
	// The recorded order still finishes the flow.
	plan.Store([]func(*idempotency.Steps[TTx]) error{step("a"), step("b")})
	if v, err := f.Do(ctx, s, "o1", 0); err != nil || v != 1 {
		t.Errorf("the recorded order: %v, %v; want 1", v, err)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// testFlowTwinsStorm: many calls of one flow with one key at once run each
// step once; one answer is fresh and every other replays it.
func testFlowTwinsStorm[TTx any](t *testing.T, e *suite[TTx]) {
	const twins = 16
	s := e.store(t, idempotency.WithWait(60*time.Second))
	c := newCheckout(e, "checkout")
	c.beforeReceipt = func(context.Context) { time.Sleep(50 * time.Millisecond) }
	o := order{Ref: "w1", Amount: 12}
	var (
		wg      sync.WaitGroup
		results [twins]idempotency.Result[receipt]
		errs    [twins]error
	)
	for i := range twins {
		wg.Go(func() { results[i], errs[i] = c.flow.Run(ctx, s, "w1", o) })
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	fresh := 0
	for _, r := range results {
		if !r.Replayed {
			fresh++
		}
		if r.Value != results[0].Value {
			t.Errorf("answers differ: %+v and %+v", r.Value, results[0].Value)
		}
	}
	_, _, charged := c.p.counts()
	if fresh != 1 || c.orders.Load() != 1 || c.receipts.Load() != 1 || charged != 1 {
		t.Errorf("%d fresh answers; order ran %d, receipt %d, provider charged %d; want 1 each", fresh, c.orders.Load(), c.receipts.Load(), charged)
	}
	if e.charges(t, "w1/order") != 1 || e.charges(t, "w1/receipt") != 1 {
		t.Error("each step's business row should exist once")
	}
}

// testFlowAtEveryIsolation: a flow runs, stops, is taken over and
// finishes at every isolation level a user may choose.
func testFlowAtEveryIsolation[TTx any](t *testing.T, e *suite[TTx]) {
	for _, level := range isolationLevels(e.kind) {
		t.Run(level.String(), func(t *testing.T) {
			s := e.store(t, idempotency.WithIsolation(level))
			c := newCheckout(e, "checkout")
			var failed atomic.Bool
			c.p.fail = func(string) error {
				if failed.CompareAndSwap(false, true) {
					return errDeclined
				}
				return nil
			}
			key := "i-" + strings.ReplaceAll(level.String(), " ", "")
			o := order{Ref: key, Amount: 8}
			if _, err := c.flow.Do(ctx, s, key, o); !errors.Is(err, errDeclined) {
				t.Fatalf("got %v; want the call's error", err)
			}
			r, err := c.flow.Run(ctx, s, key, o)
			if err != nil || r.Replayed || r.Value.Amount != 8 {
				t.Fatalf("resumed: %+v, %v", r, err)
			}
			if again, err := c.flow.Run(ctx, s, key, o); err != nil || !again.Replayed || again.Value != r.Value {
				t.Errorf("replay: %+v, %v", again, err)
			}
			if c.orders.Load() != 1 || c.receipts.Load() != 1 || e.charges(t, key+"/receipt") != 1 {
				t.Errorf("order ran %d, receipt %d; want 1 each", c.orders.Load(), c.receipts.Load())
			}
		})
	}
}

// testFlowStepRetriesConflicts: a step whose transaction meets a
// serialization failure is rolled back and run again, as Do's attempts
// are; its write commits once.
func testFlowStepRetriesConflicts[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var runs atomic.Int64
	f := idempotency.NewFlow("conflicted", func(ctx context.Context, st *idempotency.Steps[TTx], ref string) (int64, error) {
		return idempotency.Step(st, "write", func(ctx context.Context, tx TTx) (int64, error) {
			n := runs.Add(1)
			if err := e.env.Charge(ctx, tx, ref, 1); err != nil {
				return 0, err
			}
			if n == 1 {
				return 0, e.env.ExecTx(ctx, tx, `DO $$ BEGIN RAISE EXCEPTION 'a test conflict' USING ERRCODE = 'serialization_failure'; END $$`)
			}
			return n, nil
		})
	})
	v, err := f.Do(ctx, s, "x1", "x1")
	if err != nil || v != 2 || runs.Load() != 2 {
		t.Fatalf("got %v, %v after %d runs of the step; want 2 after 2", v, err, runs.Load())
	}
	if e.charges(t, "x1") != 1 {
		t.Errorf("%d rows; want the retried step's one", e.charges(t, "x1"))
	}
}

// testFlowStepEndedUnderFn: a step whose fn ends its transaction (here
// with a ROLLBACK; MySQL does so on a deadlock that fn ignores) records
// nothing, and says so with ErrTransactionEnded; the flow stays
// resumable.
func testFlowStepEndedUnderFn[TTx any](t *testing.T, e *suite[TTx]) {
	// First: the step that begins the flow (on the pgx store, in the
	// transaction that holds the flow's new row). Second: a step after
	// one that was recorded.
	for _, second := range []bool{false, true} {
		name := map[bool]string{false: "first", true: "second"}[second]
		t.Run(name, func(t *testing.T) {
			s := e.store(t)
			var runs atomic.Int64
			f := idempotency.NewFlow("ended", func(ctx context.Context, st *idempotency.Steps[TTx], ref string) (int64, error) {
				if second {
					if _, err := idempotency.Step(st, "before", func(ctx context.Context, tx TTx) (int, error) { return 1, nil }); err != nil {
						return 0, err
					}
				}
				return idempotency.Step(st, "write", func(ctx context.Context, tx TTx) (int64, error) {
					if runs.Add(1) == 1 {
						if err := e.env.ExecTx(ctx, tx, "ROLLBACK"); err != nil {
							return 0, err
						}
					}
					return 7, nil
				})
			})
			key := "e-" + name
			_, err := f.Do(ctx, s, key, key)
			if !errors.Is(err, idempotency.ErrTransactionEnded) {
				t.Fatalf("got %v; want ErrTransactionEnded", err)
			}
			want := 0
			if second {
				want = 1 // "before"
			}
			if _, steps := flowRows(t, e); steps != want {
				t.Errorf("%d steps recorded; want %d", steps, want)
			}
			if v, err := f.Do(ctx, s, key, key); err != nil || v != 7 || runs.Load() != 2 {
				t.Errorf("the retry: %v, %v after %d runs; want 7 after 2", v, err, runs.Load())
			}
		})
	}
}

// testFlowFirstStepFails: the first step of a new flow (on the pgx store,
// run in the transaction that holds the flow's new row) fails: with an
// error, its write rolls back and the flow stays resumable; with a final
// error, the failure is stored; with a panic, the panic goes on and a
// retry runs the flow. Each time a retry ends with one business row.
func testFlowFirstStepFails[TTx any](t *testing.T, e *suite[TTx]) {
	errDown := errors.New("the step failed")
	for _, how := range []string{"error", "final", "panic"} {
		t.Run(how, func(t *testing.T) {
			s := e.store(t)
			var runs atomic.Int64
			f := idempotency.NewFlow("first-"+how, func(ctx context.Context, st *idempotency.Steps[TTx], ref string) (int, error) {
				return idempotency.Step(st, "write", func(ctx context.Context, tx TTx) (int, error) {
					if err := e.env.Charge(ctx, tx, ref, 1); err != nil {
						return 0, err
					}
					if runs.Add(1) > 1 {
						return 3, nil
					}
					switch how {
					case "final":
						return 0, idempotency.FinalCode("refused", errDown)
					case "panic":
						panic("the step panicked")
					}
					return 0, errDown
				})
			})
			key := "first-" + how
			func() {
				defer func() {
					if r := recover(); (r != nil) != (how == "panic") {
						t.Errorf("recovered %v; want a panic only when fn panics", r)
					}
				}()
				_, err := f.Do(ctx, s, key, key)
				var fe *idempotency.FinalError
				if !errors.Is(err, errDown) || (how == "final") != errors.As(err, &fe) {
					t.Errorf("first run: %v; want the step's error", err)
				}
			}()
			if n := e.charges(t, key); n != 0 {
				t.Errorf("%d business rows after the failed step; want 0", n)
			}
			if flows, steps := flowRows(t, e); how == "error" && (flows != 1 || steps != 0) {
				t.Errorf("after the step's error: %d flow rows, %d steps; want the flow's row, resumable, and no step", flows, steps)
			}
			v, err := f.Do(ctx, s, key, key)
			switch how {
			case "final":
				var fe *idempotency.FinalError
				if !errors.As(err, &fe) || fe.Code != "refused" || runs.Load() != 1 || e.charges(t, key) != 0 {
					t.Errorf("retry: %v, %v after %d runs, %d rows; want the stored failure, 1 run, no row", v, err, runs.Load(), e.charges(t, key))
				}
			default:
				if err != nil || v != 3 || runs.Load() != 2 || e.charges(t, key) != 1 {
					t.Errorf("retry: %v, %v after %d runs, %d rows; want 3 after 2 runs, 1 row", v, err, runs.Load(), e.charges(t, key))
				}
			}
			if flows, steps := flowRows(t, e); flows != 0 || steps != 0 {
				t.Errorf("%d flow rows, %d steps at the end; want none", flows, steps)
			}
		})
	}
}

// testFlowTwinDuringStep: a twin that arrives while the owner's step is
// under way (its transaction holds the flow's row) neither waits for the
// step nor holds a connection for it: with no wait it is ErrInProgress at
// once.
func testFlowTwinDuringStep[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	inStep, release := make(chan struct{}), make(chan struct{})
	f := idempotency.NewFlow("slow", func(ctx context.Context, st *idempotency.Steps[TTx], ref string) (int, error) {
		return idempotency.Step(st, "slow", func(ctx context.Context, tx TTx) (int, error) {
			if err := e.env.Charge(ctx, tx, ref, 1); err != nil {
				return 0, err
			}
			close(inStep)
			<-release
			return 1, nil
		})
	})
	owner := make(chan error, 1)
	go func() { _, err := f.Do(ctx, s, "d1", "d1"); owner <- err }()
	select {
	case <-inStep:
	case err := <-owner:
		t.Fatalf("the owner ended before its step ran: %v", err)
	}
	// Were the twin to wait for the step, the step would end after 3s.
	var once sync.Once
	end := func() { once.Do(func() { close(release) }) }
	timer := time.AfterFunc(3*time.Second, end)
	defer timer.Stop()
	began := time.Now()
	_, err := f.Do(ctx, e.store(t, idempotency.WithWait(0)), "d1", "d1")
	took := time.Since(began)
	end()
	if !errors.Is(err, idempotency.ErrInProgress) || took > 2*time.Second {
		t.Errorf("a twin during the owner's step: %v after %v; want ErrInProgress at once", err, took)
	}
	if err := <-owner; err != nil {
		t.Fatal(err)
	}
}
