package conformance

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
)

func (e *suite[TTx]) store(t testing.TB, opts ...idempotency.Option) *idempotency.TxStore[TTx] {
	t.Helper()
	return e.env.NewStore(t, opts...)
}

func testFreshThenReplay[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64
	first, err := idempotency.Run(ctx, s, "k1", map[string]any{"amount": 100}, e.charge("k1", 100, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if first.Replayed {
		t.Error("first call reported a replay")
	}
	again, err := idempotency.Run(ctx, s, "k1", map[string]any{"amount": 100}, e.charge("k1", 100, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Replayed {
		t.Error("second call was not a replay")
	}
	if again.Value != first.Value {
		t.Errorf("replayed %+v, first answer was %+v", again.Value, first.Value)
	}
	if calls.Load() != 1 || e.charges(t, "k1") != 1 {
		t.Errorf("fn ran %d times, %d charges; want 1 and 1", calls.Load(), e.charges(t, "k1"))
	}
}

func testParamsMismatch[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64
	if _, err := idempotency.Do(ctx, s, "k", map[string]int{"amount": 1}, e.charge("k", 1, &calls)); err != nil {
		t.Fatal(err)
	}
	_, err := idempotency.Do(ctx, s, "k", map[string]int{"amount": 2}, e.charge("k", 2, &calls))
	if !errors.Is(err, idempotency.ErrParamsMismatch) {
		t.Fatalf("got %v, want ErrParamsMismatch", err)
	}
	if calls.Load() != 1 || e.charges(t, "k") != 1 {
		t.Errorf("fn ran %d times; want 1", calls.Load())
	}
}

func testFnErrorStoresNothing[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64
	_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx TTx) (receipt, error) {
		if _, err := e.charge("k", 1, &calls)(ctx, tx); err != nil {
			return receipt{}, err
		}
		return receipt{}, fmt.Errorf("wrapped: %w", errDeclined)
	})
	if !errors.Is(err, errDeclined) || err.Error() != "wrapped: card declined" {
		t.Fatalf("got %v, want fn's error unchanged", err)
	}
	if e.charges(t, "k") != 0 || e.keys(t) != 0 {
		t.Fatal("a failed call left rows behind")
	}
	// A retry runs fn again.
	if _, err := idempotency.Do(ctx, s, "k", nil, e.charge("k", 1, &calls)); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 || e.charges(t, "k") != 1 {
		t.Errorf("fn ran %d times, %d charges; want 2 and 1", calls.Load(), e.charges(t, "k"))
	}
}

func testPanicRollsBack[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the panic to pass through", r)
			}
		}()
		_, _ = idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx TTx) (receipt, error) {
			_, _ = e.charge("k", 1, &calls)(ctx, tx)
			panic("boom")
		})
	}()
	if e.charges(t, "k") != 0 || e.keys(t) != 0 {
		t.Fatal("a panicking call left rows behind")
	}
	if _, err := idempotency.Do(ctx, s, "k", nil, e.charge("k", 1, &calls)); err != nil {
		t.Fatalf("after a panic the key is not free: %v", err)
	}
}

func testCancelledContext[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64
	cctx, cancel := context.WithCancel(ctx)
	_, err := idempotency.Do(cctx, s, "k", nil, func(ctx context.Context, tx TTx) (receipt, error) {
		r, err := e.charge("k", 1, &calls)(ctx, tx)
		cancel() // the caller gives up while fn finishes
		return r, err
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if e.charges(t, "k") != 0 || e.keys(t) != 0 {
		t.Fatal("a cancelled call left rows behind")
	}
	_, err = idempotency.Do(cctx, s, "k2", nil, e.charge("k2", 1, &calls))
	if !errors.Is(err, context.Canceled) || calls.Load() != 1 {
		t.Fatalf("a call with a cancelled context: %v after %d calls; want context.Canceled without calling fn", err, calls.Load())
	}
}

func testFinalFailureIsRemembered[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64
	declined := func(ctx context.Context, tx TTx) (receipt, error) {
		if _, err := e.charge("k", 1, &calls)(ctx, tx); err != nil {
			return receipt{}, err
		}
		return receipt{}, idempotency.FinalCode("card_declined", errDeclined)
	}
	_, err := idempotency.Do(ctx, s, "k", "p", declined)
	var fe *idempotency.FinalError
	if !errors.As(err, &fe) || fe.Code != "card_declined" || !errors.Is(err, errDeclined) {
		t.Fatalf("first call: %v, want the final error itself", err)
	}
	r, err := idempotency.Run(ctx, s, "k", "p", declined)
	if !errors.As(err, &fe) || fe.Code != "card_declined" || err.Error() != errDeclined.Error() || !r.Replayed {
		t.Fatalf("retry: %v (replayed %v), want the same failure replayed", err, r.Replayed)
	}
	if calls.Load() != 1 {
		t.Errorf("fn ran %d times; want 1", calls.Load())
	}
	if e.charges(t, "k") != 0 || e.keys(t) != 1 {
		t.Errorf("%d charges and %d keys; want the business write undone and the failure stored", e.charges(t, "k"), e.keys(t))
	}
}

// testExpiredKeyRunsAgain: a key replays within its TTL and runs again after
// it. A replay is due only if it came within the TTL of the save: on a
// machine slow enough that a call and its replay take longer than the TTL,
// the test starts over with a key of its own and a longer TTL.
func testExpiredKeyRunsAgain[TTx any](t *testing.T, e *suite[TTx]) {
	for ttl, keys := 200*time.Millisecond, 1; ; ttl, keys = ttl*4, keys+1 {
		key := "k-" + ttl.String()
		s := e.store(t, idempotency.WithTTL(ttl))
		var calls atomic.Int64
		began := time.Now()
		if _, err := idempotency.Do(ctx, s, key, nil, e.charge(key, 1, &calls)); err != nil {
			t.Fatal(err)
		}
		r, err := idempotency.Run(ctx, s, key, nil, e.charge(key, 1, &calls))
		if took := time.Since(began); took >= ttl && ttl < 10*time.Second {
			t.Logf("a call and its replay took %v, more than the TTL of %v; again with %v", took, ttl, 4*ttl)
			continue
		}
		if err != nil || !r.Replayed {
			t.Fatalf("within the TTL: %v, replayed %v", err, r.Replayed)
		}
		time.Sleep(2 * ttl)
		r, err = idempotency.Run(ctx, s, key, "other params are fine once expired", e.charge(key, 1, &calls))
		if err != nil || r.Replayed {
			t.Fatalf("after the TTL: %v, replayed %v; want a fresh run", err, r.Replayed)
		}
		if calls.Load() != 2 || e.keys(t) != keys {
			t.Errorf("fn ran %d times, %d keys; want 2 and %d (the expired row replaced)", calls.Load(), e.keys(t), keys)
		}
		return
	}
}

// testTTLCountsFromCommit: a key replays for its whole TTL after its call
// committed, however long fn took. The replay is due only if it came within
// the TTL of fn's end (the save follows it): on a machine too slow for that,
// the test starts over with a key of its own and a longer TTL.
func testTTLCountsFromCommit[TTx any](t *testing.T, e *suite[TTx]) {
	for ttl := time.Second; ; ttl *= 4 {
		key := "k-" + ttl.String()
		s := e.store(t, idempotency.WithTTL(ttl))
		var calls atomic.Int64
		var fnDone time.Time
		slow := func(ctx context.Context, tx TTx) (receipt, error) {
			r, err := e.charge(key, 1, &calls)(ctx, tx)
			time.Sleep(ttl + ttl/5)
			fnDone = time.Now()
			return r, err
		}
		if _, err := idempotency.Do(ctx, s, key, nil, slow); err != nil {
			t.Fatal(err)
		}
		r, err := idempotency.Run(ctx, s, key, nil, e.charge(key, 1, &calls))
		if took := time.Since(fnDone); took >= ttl && ttl < 10*time.Second {
			t.Logf("the replay came %v after fn, more than the TTL of %v; again with %v", took, ttl, 4*ttl)
			continue
		}
		if err != nil || !r.Replayed || calls.Load() != 1 {
			t.Fatalf("right after a call that took longer than the TTL: %v, replayed %v, fn ran %d times; want a replay", err, r.Replayed, calls.Load())
		}
		return
	}
}

// testBadInputWritesNothing gives Do each bad input and checks the exact
// error, that errors.Is finds its sentinels, how often fn ran, and that
// nothing was written: no key row, no business row.
func testBadInputWritesNothing[TTx any](t *testing.T, e *suite[TTx]) {
	long := strings.Repeat("k", 256)
	invalidKey := []error{idempotency.ErrInvalidKey}
	badParams := []error{idempotency.ErrBadParams}
	tests := []struct {
		name   string
		scope  string
		key    string
		params any
		value  any // what fn returns
		nilFn  bool
		want   string
		is     []error
		calls  int64 // how many times fn may run (it runs for a bad value)
	}{
		{name: "empty key", key: "",
			want: "idempotency: invalid key: the key is empty", is: invalidKey},
		{name: "key over 255 bytes", key: long,
			want: "idempotency: invalid key: the key is 256 bytes, longer than 255", is: invalidKey},
		{name: "key with a newline", key: "abc\n",
			want: "idempotency: invalid key: byte 3 is 0x0a, not printable ASCII", is: invalidKey},
		{name: "key with a NUL", key: "\x00abc",
			want: "idempotency: invalid key: byte 0 is 0x00, not printable ASCII", is: invalidKey},
		{name: "key with DEL", key: "a\x7f",
			want: "idempotency: invalid key: byte 1 is 0x7f, not printable ASCII", is: invalidKey},
		{name: "key with UTF-8", key: "clé",
			want: "idempotency: invalid key: byte 2 is 0xc3, not printable ASCII", is: invalidKey},
		{name: "scope over 255 bytes", scope: long, key: "k",
			want: "idempotency: invalid scope: the scope is 256 bytes, longer than 255",
			is:   []error{idempotency.ErrInvalidScope, idempotency.ErrInvalidKey}},
		{name: "params a channel", key: "k", params: make(chan int),
			want: "idempotency: params cannot be encoded as JSON: json: unsupported type: chan int", is: badParams},
		{name: "params NaN", key: "k", params: math.NaN(),
			want: "idempotency: params cannot be encoded as JSON: json: unsupported value: NaN", is: badParams},
		{name: "params NaN in a map", key: "k", params: map[string]float64{"amount": math.NaN()},
			want: "idempotency: params cannot be encoded as JSON: json: unsupported value: NaN", is: badParams},
		{name: "params invalid UTF-8", key: "k", params: map[string]string{"card": "\xff"},
			want: "idempotency: params cannot be encoded as JSON: a string is not valid UTF-8 (pass binary data as []byte)", is: badParams},
		{name: "value a function", key: "k", value: func() {}, calls: 1,
			want: "idempotency: fn's value cannot be encoded as JSON (nothing was committed): json: unsupported type: func()"},
		{name: "value a channel", key: "k", value: make(chan int), calls: 1,
			want: "idempotency: fn's value cannot be encoded as JSON (nothing was committed): json: unsupported type: chan int"},
		{name: "value +Inf", key: "k", value: math.Inf(1), calls: 1,
			want: "idempotency: fn's value cannot be encoded as JSON (nothing was committed): json: unsupported value: +Inf"},
		{name: "nil fn", key: "k", nilFn: true,
			want: "idempotency: nil fn: pass the function that does the work"},
	}
	s := e.store(t)
	for _, tt := range tests {
		var calls atomic.Int64
		fn := func(ctx context.Context, tx TTx) (any, error) {
			calls.Add(1)
			if err := e.env.Charge(ctx, tx, tt.key, 1); err != nil {
				return nil, err
			}
			return tt.value, nil
		}
		if tt.nilFn {
			fn = nil
		}
		_, err := idempotency.Do(ctx, s.Scope(tt.scope), tt.key, tt.params, fn)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
		for _, is := range tt.is {
			if !errors.Is(err, is) {
				t.Errorf("%s: errors.Is(%v, %v) = false", tt.name, err, is)
			}
		}
		if n := calls.Load(); n != tt.calls {
			t.Errorf("%s: fn ran %d times, want %d", tt.name, n, tt.calls)
		}
		e.assertEmpty(t, tt.name)
	}

	// 255 bytes of printable ASCII is a key.
	if err := idempotency.ValidateKey(strings.Repeat("~", 255)); err != nil {
		t.Error(err)
	}
	fn := func(context.Context, TTx) (int, error) { return 1, nil }
	if _, err := idempotency.Do(ctx, (*idempotency.TxStore[TTx])(nil), "k", nil, fn); err == nil ||
		err.Error() != "idempotency: nil *Store: create one with idempotency.New" {
		t.Errorf("Do with a nil store: %v", err)
	}
	var none TTx
	want := fmt.Sprintf("idempotency: DoTx with a nil %v: begin one, or call Do", reflect.TypeFor[TTx]())
	if _, err := idempotency.DoTx(ctx, none, s, "k", nil, fn); err == nil || err.Error() != want {
		t.Errorf("DoTx with a nil transaction: %v, want %q", err, want)
	}
	e.assertEmpty(t, "nil store or transaction")
}

// assertEmpty checks that the key table and the business table are empty.
func (e *suite[TTx]) assertEmpty(t *testing.T, name string) {
	t.Helper()
	for _, table := range []string{"idempotency_keys", "charges"} {
		if n := e.env.Count(t, `SELECT COUNT(*) FROM `+table); n != 0 {
			t.Errorf("%s: %d rows in %s after a bad input, want 0", name, n, table)
		}
	}
}

func testScopesAreIsolated[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64
	a, err := idempotency.Run(ctx, s.Scope("acct_a"), "k", nil, e.charge("k", 1, &calls))
	if err != nil {
		t.Fatal(err)
	}
	b, err := idempotency.Run(ctx, s.Scope("acct_b"), "k", nil, e.charge("k", 1, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if a.Replayed || b.Replayed || calls.Load() != 2 {
		t.Errorf("the same key in two scopes ran %d times; want 2 fresh runs", calls.Load())
	}
}

// undecodable encodes to JSON that cannot be decoded back: an interface.
type undecodable struct {
	Err error `json:"err"`
}

// testValueThatDoesNotDecode: a value whose JSON cannot be decoded into T
// would be stored and then fail every call; it must commit nothing.
func testValueThatDoesNotDecode[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64
	_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx TTx) (undecodable, error) {
		_, err := e.charge("k", 1, &calls)(ctx, tx)
		return undecodable{Err: errDeclined}, err
	})
	if err == nil || !strings.Contains(err.Error(), "nothing was committed") {
		t.Fatalf("a value that does not decode: %v; want an error that says nothing was committed", err)
	}
	if e.charges(t, "k") != 0 || e.keys(t) != 0 {
		t.Fatalf("%d charges and %d keys; want the call rolled back", e.charges(t, "k"), e.keys(t))
	}
	if _, err := idempotency.Do(ctx, s, "k", nil, e.charge("k", 1, &calls)); err != nil {
		t.Fatalf("a retry with a value that decodes: %v", err)
	}
}

// testReadFirst: with WithReadFirst a replay is answered by one read before
// any transaction, and everything else behaves as without it.
func testReadFirst[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t, idempotency.WithReadFirst(true), idempotency.WithWait(30*time.Second))
	var calls atomic.Int64
	first, err := idempotency.Run(ctx, s, "rf", 1, e.charge("rf", 1, &calls))
	if err != nil || first.Replayed {
		t.Fatalf("fresh: %v, replayed %v", err, first.Replayed)
	}
	again, err := idempotency.Run(ctx, s, "rf", 1, e.charge("rf", 1, &calls))
	if err != nil || !again.Replayed || again.Value != first.Value {
		t.Fatalf("replay: %v, %+v", err, again)
	}
	if _, err := idempotency.Do(ctx, s, "rf", 2, e.charge("rf", 2, &calls)); !errors.Is(err, idempotency.ErrParamsMismatch) {
		t.Fatalf("other params: %v", err)
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := idempotency.Do(ctx, s, "rf-twins", 1, e.charge("rf-twins", 1, &calls)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// With optimistic transactions the twins that began before the winner
	// committed run fn too, and roll back.
	ranOnce := calls.Load() == 2 || e.optimistic && calls.Load() >= 2
	if !ranOnce || e.charges(t, "rf") != 1 || e.charges(t, "rf-twins") != 1 {
		t.Errorf("fn ran %d times, %d and %d charges; want 2 (one per key), 1 and 1", calls.Load(), e.charges(t, "rf"), e.charges(t, "rf-twins"))
	}
}

// testDefaultReadFirst: without WithReadFirst the dialect chooses. MySQL,
// MariaDB and SQLite read first while more than a quarter of the store's
// recent calls replayed. A replay of a key that another transaction keeps
// from being claimed (it holds the key's row on MySQL, the write lock on
// SQLite) is held up while fresh calls dominate, for its claim needs the
// lock, and answered once replays do, for its read does not.
func testDefaultReadFirst[TTx any](t *testing.T, e *suite[TTx]) {
	var calls atomic.Int64
	seed := e.store(t)
	for _, key := range []string{"locked", "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"} {
		if _, err := idempotency.Do(ctx, seed, key, nil, e.charge(key, 1, &calls)); err != nil {
			t.Fatal(err)
		}
	}
	// replay replays "locked" in a context that ends long before the lock
	// would; lock is a statement that keeps others from claiming it.
	replay := func(s *idempotency.TxStore[TTx]) error {
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		r, err := idempotency.Run(cctx, s, "locked", nil, e.charge("locked", 1, &calls))
		if err == nil && !r.Replayed {
			err = errors.New("not replayed")
		}
		return err
	}
	lock := map[string]string{
		"sqlite": `INSERT INTO charges (ref, amount) VALUES ('lock', 0)`, // takes the write lock
		"mysql":  "SELECT 1 FROM idempotency_keys WHERE scope = '' AND `key` = 'locked' FOR UPDATE",
	}[e.kind]
	s := e.store(t, idempotency.WithWait(0))
	claimFirst := e.store(t, idempotency.WithReadFirst(false), idempotency.WithWait(0))
	// The replays and fresh calls below run while the lock is not held,
	// those of "locked" while it is.
	underLock := func(s *idempotency.TxStore[TTx]) error {
		t.Helper()
		holder, err := e.env.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = e.env.Rollback(ctx, holder) }()
		if err := e.env.ExecTx(ctx, holder, lock); err != nil {
			t.Fatal(err)
		}
		return replay(s)
	}
	if err := underLock(claimFirst); err == nil {
		t.Fatal("a replay that claims first was answered under the lock: the test cannot tell a read from a claim")
	}
	if err := underLock(s); err == nil {
		t.Fatal("a replay under the lock, by a store that has seen no calls, was answered; want it to claim first")
	}
	for i := range 10 {
		key := fmt.Sprintf("r%d", i)
		if r, err := idempotency.Run(ctx, s, key, nil, e.charge(key, 1, &calls)); err != nil || !r.Replayed {
			t.Fatalf("replay %s: %v, replayed %v", key, err, r.Replayed)
		}
	}
	if err := underLock(s); err != nil {
		t.Fatalf("a replay under the lock after ten replays: %v; want it read first and answered", err)
	}
	for i := range 20 {
		key := fmt.Sprintf("f%d", i)
		if _, err := idempotency.Do(ctx, s, key, nil, e.charge(key, 1, &calls)); err != nil {
			t.Fatal(err)
		}
	}
	if err := underLock(s); err == nil {
		t.Fatal("a replay under the lock after twenty fresh calls was answered; want it to claim first again")
	}
	if calls.Load() != 31 {
		t.Errorf("fn ran %d times, want 31: once per key", calls.Load())
	}
}
