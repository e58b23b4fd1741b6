package conformance

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
)

// testTwinsRunOnce: 64 goroutines on one key commit fn's write once and
// all get its value, at every isolation level. fn runs once, except with
// optimistic transactions, where twins that started before the winner
// committed run it too and roll back.
func testTwinsRunOnce[TTx any](t *testing.T, e *suite[TTx]) {
	for _, level := range isolationLevels(e.kind) {
		t.Run(level.String(), func(t *testing.T) {
			s := e.store(t, idempotency.WithIsolation(level), idempotency.WithWait(30*time.Second))
			key := "twins-" + strings.ReplaceAll(level.String(), " ", "")
			var calls atomic.Int64
			fn := func(ctx context.Context, tx TTx) (receipt, error) {
				r, err := e.charge(key, 7, &calls)(ctx, tx)
				time.Sleep(50 * time.Millisecond) // keep the twins waiting
				return r, err
			}
			fresh := startTwins(s, key, 7, 64, fn).wait(t)
			ranOnce := calls.Load() == 1 || e.optimistic && calls.Load() >= 1
			if !ranOnce || fresh != 1 || e.charges(t, key) != 1 {
				t.Errorf("fn ran %d times, %d fresh answers, %d charges; want 1, 1, 1", calls.Load(), fresh, e.charges(t, key))
			}
			if e.optimistic {
				t.Logf("fn ran %d times (optimistic: rolled-back twins included)", calls.Load())
			}
		})
	}
}

// testWinnerRollsBack: the first call holds the key while twins wait, then
// fails; one twin runs fn, the rest replay it, and no write leaks (on
// MariaDB the twins see deadlocks here).
func testWinnerRollsBack[TTx any](t *testing.T, e *suite[TTx]) {
	for _, level := range isolationLevels(e.kind) {
		t.Run(level.String(), func(t *testing.T) {
			s := e.store(t, idempotency.WithIsolation(level), idempotency.WithWait(30*time.Second))
			key := "winner-" + strings.ReplaceAll(level.String(), " ", "")
			var calls atomic.Int64
			release := make(chan struct{})
			winner := holdCall(t, s, key, func() { <-release }, func(ctx context.Context, tx TTx) (receipt, error) {
				_, _ = e.charge(key, 1, &calls)(ctx, tx)
				return receipt{}, errDeclined
			})
			twins := startTwins(s, key, nil, 16, e.charge(key, 1, &calls))
			time.Sleep(300 * time.Millisecond) // let the twins queue on the key
			close(release)
			if err := <-winner; !errors.Is(err, errDeclined) {
				t.Fatalf("winner: %v", err)
			}
			fresh := twins.wait(t)
			if fresh != 1 || e.charges(t, key) != 1 {
				t.Errorf("%d fresh answers, %d charges; want 1 and 1", fresh, e.charges(t, key))
			}
		})
	}
}

// twins are calls on one key, started at once.
type twins struct {
	wg      sync.WaitGroup
	results []idempotency.Result[receipt]
	errs    []error
}

// startTwins starts n calls of fn on key with params.
func startTwins[TTx any](s *idempotency.TxStore[TTx], key string, params any, n int, fn func(context.Context, TTx) (receipt, error)) *twins {
	w := &twins{results: make([]idempotency.Result[receipt], n), errs: make([]error, n)}
	for i := range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.results[i], w.errs[i] = idempotency.Run(ctx, s, key, params, fn)
		}()
	}
	return w
}

// wait waits for the twins, fails t unless every one succeeded with the
// same value, and returns how many computed it rather than replayed it.
func (w *twins) wait(t *testing.T) (fresh int) {
	t.Helper()
	w.wg.Wait()
	for i := range w.results {
		if w.errs[i] != nil {
			t.Fatalf("twin %d: %v", i, w.errs[i])
		}
		if w.results[i].Value != w.results[0].Value {
			t.Fatalf("twin %d got %+v, twin 0 got %+v", i, w.results[i].Value, w.results[0].Value)
		}
		if !w.results[i].Replayed {
			fresh++
		}
	}
	return fresh
}

func testWaitBound[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t, idempotency.WithWait(100*time.Millisecond))
	var calls atomic.Int64
	release := make(chan struct{})
	winner := holdCall(t, s, "slow", func() { <-release }, e.charge("slow", 1, &calls))
	_, err := idempotency.Do(ctx, s, "slow", nil, e.charge("slow", 1, &calls))
	close(release)
	if !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("twin past the wait bound: %v, want ErrInProgress", err)
	}
	if err := <-winner; err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 || e.charges(t, "slow") != 1 {
		t.Errorf("fn ran %d times; want 1", calls.Load())
	}
}

// testTwinsMeetAtCommit: with optimistic transactions a holder that has
// not committed is invisible, so a twin does not wait for it: it runs fn
// and commits first. The holder's COMMIT then fails on the twin's key (a
// write conflict), its writes roll back, and its next attempt replays the
// twin's value without calling fn again.
func testTwinsMeetAtCommit[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t, idempotency.WithWait(100*time.Millisecond))
	var calls, holderCalls atomic.Int64
	release := make(chan struct{})
	claimed := make(chan struct{})
	holder := make(chan error, 1)
	var held idempotency.Result[receipt]
	go func() {
		var err error
		held, err = idempotency.Run(ctx, s, "k", nil, func(ctx context.Context, tx TTx) (receipt, error) {
			r, err := e.charge("k", 1, &calls)(ctx, tx)
			if holderCalls.Add(1) == 1 {
				close(claimed)
				<-release
			}
			return r, err
		})
		holder <- err
	}()
	waitClaimed(t, claimed, holder)
	twin, err := idempotency.Run(ctx, s, "k", nil, e.charge("k", 1, &calls))
	close(release)
	if err != nil || twin.Replayed {
		t.Fatalf("the twin beside a running holder: %+v, %v; want a fresh value", twin, err)
	}
	if err := <-holder; err != nil {
		t.Fatalf("the holder, after the twin committed: %v", err)
	}
	if !held.Replayed || held.Value != twin.Value {
		t.Errorf("the holder got %+v, want a replay of the twin's %+v", held, twin.Value)
	}
	if calls.Load() != 2 || holderCalls.Load() != 1 || e.charges(t, "k") != 1 || e.keys(t) != 1 {
		t.Errorf("fn ran %d times (the holder's %d), %d charges, %d keys; want 2 (1), 1, 1",
			calls.Load(), holderCalls.Load(), e.charges(t, "k"), e.keys(t))
	}
}

// testLongWait: a wait bound of a month is a valid setting (Postgres's
// lock_timeout stops at about 24 days).
func testLongWait[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t, idempotency.WithWait(30*24*time.Hour))
	holder := holdKey(t, s, "k", 300*time.Millisecond)
	r, err := idempotency.Run(ctx, s, "k", nil, func(context.Context, TTx) (int, error) { return 2, nil })
	if err != nil || !r.Replayed || r.Value != 1 {
		t.Fatalf("a twin with a month's wait: %+v, %v; want a replay of 1", r, err)
	}
	if err := <-holder; err != nil {
		t.Fatal(err)
	}
}

// testStorm: thousands of calls over hundreds of keys from many
// goroutines; every key's fn commits once and every caller of a key gets
// one value.
func testStorm[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t, idempotency.WithWait(time.Minute))
	const calls, keys, workers = 2000, 200, 32
	var ran atomic.Int64
	var seen sync.Map
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= calls {
					return
				}
				key := fmt.Sprintf("storm-%d", rand.IntN(keys))
				r, err := idempotency.Do(ctx, s, key, key, e.charge(key, 1, &ran))
				if err != nil {
					t.Errorf("%s: %v", key, err)
					return
				}
				if prev, loaded := seen.LoadOrStore(key, r); loaded && prev.(receipt) != r {
					t.Errorf("%s: two answers %+v and %+v", key, prev, r)
				}
			}
		}()
	}
	wg.Wait()
	rows := e.env.Count(t, `SELECT COUNT(*) FROM charges`)
	distinct := e.env.Count(t, `SELECT COUNT(DISTINCT ref) FROM charges`)
	if rows != distinct || distinct != e.keys(t) || distinct < keys*9/10 {
		t.Errorf("%d charges over %d keys, %d key rows; want one charge per key row, nearly all %d keys", rows, distinct, e.keys(t), keys)
	}
	t.Logf("%d calls, %d keys: fn ran %d times (rolled-back attempts included)", calls, keys, ran.Load())
}

// testWaitingTwinsLeaveThePool: twins waiting for a slow holder must not
// keep pooled connections for their wait, so other keys go on. With four
// connections, one holder whose fn sleeps 3s and three twins, a call on
// another key with a 2s budget succeeds.
func testWaitingTwinsLeaveThePool[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.env.Reopen(t, Pool{MaxConns: 4}).NewStore(t, idempotency.WithWait(10*time.Second))
	holder := holdKey(t, s, "slow", 3*time.Second)
	twins := make(chan error, 3)
	for range 3 {
		go func() {
			r, err := idempotency.Run(ctx, s, "slow", nil, func(context.Context, TTx) (int, error) { return 2, nil })
			if err == nil && (!r.Replayed || r.Value != 1) {
				err = fmt.Errorf("twin got %+v, want a replay of the holder's 1", r)
			}
			twins <- err
		}()
	}
	time.Sleep(300 * time.Millisecond) // the twins are waiting now

	budget, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	began := time.Now()
	v, err := idempotency.Do(budget, s, "other", nil, func(context.Context, TTx) (int, error) { return 3, nil })
	if err != nil || v != 3 {
		t.Errorf("a call on another key while three twins wait: %v, %v after %v; want 3 within its 2s budget", v, err, time.Since(began))
	}
	if err := <-holder; err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-twins; err != nil {
			t.Error(err)
		}
	}
}

// testQueuedCallObeysContext: a call waiting for a connection from a full
// pool gives up when its context ends.
func testQueuedCallObeysContext[TTx any](t *testing.T, e *suite[TTx]) {
	pool := e.env.Reopen(t, Pool{MaxConns: 2})
	s := pool.NewStore(t)
	var releases []func()
	for range 2 {
		release, err := pool.Hold(ctx)
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, sync.OnceFunc(release))
	}
	releaseAll := func() {
		for _, release := range releases {
			release()
		}
	}
	// Should Do not give up, the connections come back after 5s.
	defer time.AfterFunc(5*time.Second, releaseAll).Stop()
	defer releaseAll()
	budget, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := idempotency.Do(budget, s, "queued", nil, func(context.Context, TTx) (int, error) { return 1, nil })
	took := time.Since(began)
	if !errors.Is(err, context.DeadlineExceeded) || took > 2*time.Second {
		t.Fatalf("a call behind a full pool: %v after %v; want context.DeadlineExceeded within its 300ms budget", err, took)
	}
}

// testQueuedCallObeysContextOnSQLiteLock: on SQLite a call waits for the
// write lock in BEGIN (busy_timeout); its context still ends the wait.
func testQueuedCallObeysContextOnSQLiteLock[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	holder := holdKey(t, s, "writer", 2*time.Second)
	budget, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := idempotency.Do(budget, s, "other", nil, func(context.Context, TTx) (int, error) { return 1, nil })
	took := time.Since(began)
	if !errors.Is(err, context.DeadlineExceeded) || took > 1500*time.Millisecond {
		t.Errorf("a call waiting for SQLite's write lock: %v after %v; want context.DeadlineExceeded within its 300ms budget", err, took)
	}
	if err := <-holder; err != nil {
		t.Fatal(err)
	}
}

// testLostConnectionsAreRetried cuts connections at random. When the cut
// breaks one of Do's own statements before COMMIT, the attempt runs again
// on another connection; callers see success, ErrOutcomeUnknown when the
// cut hit the COMMIT, or fn's own error (unchanged) when it hit fn's
// statement. After one more try every key has exactly one charge.
func testLostConnectionsAreRetried[TTx any](t *testing.T, e *suite[TTx]) {
	proxy := StartProxy(t, e.env)
	s := e.env.Reopen(t, Pool{Addr: proxy.Addr()}).NewStore(t, idempotency.WithMaxRetries(20))
	proxy.SetChaos(&faultproxy.Chaos{CutProb: 0.05})
	var calls atomic.Int64
	unknown, fnErrors := 0, 0
	const n = 60
	for i := range n {
		key := fmt.Sprintf("lost-%d", i)
		_, err := idempotency.Do(ctx, s, key, nil, e.charge(key, 1, &calls))
		switch {
		case errors.Is(err, idempotency.ErrOutcomeUnknown):
			unknown++
		case err != nil && strings.HasPrefix(err.Error(), "idempotency:"):
			t.Errorf("%s: %v; a broken connection before COMMIT should have been retried", key, err)
		case err != nil:
			fnErrors++
		}
	}
	proxy.SetChaos(nil)
	for i := range n {
		key := fmt.Sprintf("lost-%d", i)
		if _, err := idempotency.Do(ctx, s, key, nil, e.charge(key, 1, &calls)); err != nil {
			t.Errorf("%s: final try: %v", key, err)
		}
		if got := e.charges(t, key); got != 1 {
			t.Errorf("%s: %d charges, want 1", key, got)
		}
	}
	st := proxy.Stats()
	if st.CutsMid == 0 {
		t.Error("the proxy cut nothing; the test proved nothing")
	}
	t.Logf("%d calls, %d connections cut mid-stream, %d outcomes unknown, %d errors from fn's own statements, fn ran %d times",
		n, st.CutsMid, unknown, fnErrors, calls.Load())
}

// StartProxy starts a fault proxy in front of env's server, closed at t's
// cleanup: reach it through env.Reopen(t, Pool{Addr: proxy.Addr()}).
func StartProxy[TTx any](t testing.TB, env Env[TTx]) *faultproxy.Proxy {
	t.Helper()
	target := env.Server()
	if target == "" {
		t.Fatal("the database has no server to proxy")
	}
	proxy, err := faultproxy.Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	return proxy
}
