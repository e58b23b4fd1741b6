package conformance

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
)

func testDoTx[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64

	// The key commits with the caller's transaction.
	tx, err := e.env.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A test that fails half-way must not leave a transaction holding a
	// connection that the pool's cleanup would wait for forever.
	defer func() { _ = e.env.Rollback(ctx, tx) }()
	if _, err := idempotency.DoTx(ctx, tx, s, "joined", nil, e.charge("joined", 1, &calls)); err != nil {
		t.Fatal(err)
	}
	// A replay inside the same transaction sees its own key.
	if r, err := idempotency.RunTx(ctx, tx, s, "joined", nil, e.charge("joined", 1, &calls)); err != nil || !r.Replayed {
		t.Fatalf("replay in the same transaction: %v, replayed %v", err, r.Replayed)
	}
	// fn's error undoes fn's writes but leaves the transaction usable.
	_, err = idempotency.DoTx(ctx, tx, s, "failing", nil, func(ctx context.Context, tx TTx) (int, error) {
		_, _ = e.charge("failing", 1, &calls)(ctx, tx)
		return 0, errDeclined
	})
	if !errors.Is(err, errDeclined) {
		t.Fatalf("got %v", err)
	}
	if err := e.env.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if e.charges(t, "joined") != 1 || e.charges(t, "failing") != 0 || e.keys(t) != 1 {
		t.Errorf("after commit: %d joined, %d failing charges, %d keys; want 1, 0, 1", e.charges(t, "joined"), e.charges(t, "failing"), e.keys(t))
	}

	// When the caller rolls back, the key goes with it.
	if tx, err = e.env.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := idempotency.DoTx(ctx, tx, s, "rolled", nil, e.charge("rolled", 1, &calls)); err != nil {
		t.Fatal(err)
	}
	_ = e.env.Rollback(ctx, tx)
	if e.charges(t, "rolled") != 0 || e.keys(t) != 1 {
		t.Error("a rolled-back caller's key survived")
	}
	if r, err := idempotency.Run(ctx, s, "joined", nil, e.charge("joined", 1, &calls)); err != nil || !r.Replayed {
		t.Errorf("Do after DoTx: %v, replayed %v", err, r.Replayed)
	}
}

// testTransactionEndedUnderFn: when the database ends fn's transaction and
// fn ignores the error, fn's later statements run outside it. The call must
// say so (ErrTransactionEnded), not report a failure that is safe to retry.
// A ROLLBACK sent through tx does what MySQL does on a deadlock and SQLite
// on a full disk; on Postgres an error aborts the transaction instead, and
// nothing escapes.
func testTransactionEndedUnderFn[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	var calls atomic.Int64
	if e.kind == "postgres" {
		e.env.Exec(t, `CREATE TABLE uniq (id INTEGER PRIMARY KEY)`)
		_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx TTx) (int, error) {
			_, _ = e.charge("k", 1, &calls)(ctx, tx)
			_ = e.env.ExecTx(ctx, tx, `INSERT INTO uniq VALUES (1), (1)`) // an error fn ignores
			return 1, nil
		})
		if err == nil || errors.Is(err, idempotency.ErrTransactionEnded) || !strings.Contains(err.Error(), "error fn did not return") {
			t.Fatalf("an error fn ignored on Postgres: %v; want an error that says fn ignored an error (and nothing escaped)", err)
		}
		if e.charges(t, "k") != 0 || e.keys(t) != 0 {
			t.Fatalf("%d charges, %d keys; want nothing committed", e.charges(t, "k"), e.keys(t))
		}
		return
	}
	_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx TTx) (int, error) {
		if err := e.env.ExecTx(ctx, tx, "ROLLBACK"); err != nil {
			return 0, err
		}
		_, _ = e.charge("k", 1, &calls)(ctx, tx) // now outside any transaction
		return 1, nil
	})
	if !errors.Is(err, idempotency.ErrTransactionEnded) {
		t.Fatalf("fn went on after its transaction ended: %v; want ErrTransactionEnded", err)
	}
	if e.keys(t) != 0 {
		t.Fatal("a key was stored for a call whose transaction had ended")
	}
}

// testSwallowedDeadlockInFn: on MySQL and MariaDB a deadlock inside fn
// rolls its transaction back; an fn that ignores the error and writes on
// writes outside it. Do must report ErrTransactionEnded, never a safe
// failure.
func testSwallowedDeadlockInFn[TTx any](t *testing.T, e *suite[TTx]) {
	for _, q := range []string{`CREATE TABLE accounts (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)`,
		`INSERT INTO accounts VALUES (1, 0), (2, 0)`, `CREATE TABLE ballast (id INTEGER PRIMARY KEY)`} {
		e.env.Exec(t, q)
	}
	s := e.store(t)
	var calls atomic.Int64
	locked1, locked2 := make(chan struct{}), make(chan struct{})
	other := make(chan error, 1)
	go func() {
		<-locked1
		tx, err := e.env.Begin(ctx)
		if err != nil {
			other <- err
			return
		}
		defer func() { _ = e.env.Rollback(ctx, tx) }()
		for i := range 300 {
			if err := e.env.ExecTx(ctx, tx, fmt.Sprintf(`INSERT INTO ballast VALUES (%d)`, i)); err != nil {
				other <- err
				return
			}
		}
		if err := e.env.ExecTx(ctx, tx, `UPDATE accounts SET n = n + 1 WHERE id = 2`); err != nil {
			other <- err
			return
		}
		close(locked2)
		if err := e.env.ExecTx(ctx, tx, `UPDATE accounts SET n = n + 1 WHERE id = 1`); err != nil { // waits for fn
			other <- err
			return
		}
		other <- e.env.Commit(ctx, tx)
	}()
	var fnErr error
	_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx TTx) (int, error) {
		if err := e.env.ExecTx(ctx, tx, `UPDATE accounts SET n = n + 1 WHERE id = 1`); err != nil {
			return 0, err
		}
		close(locked1)
		// The other transaction, heavier so that InnoDB picks this one as
		// the victim, holds row 2 and then waits for row 1: let it start
		// waiting.
		select {
		case <-locked2:
		case <-time.After(time.Minute):
		}
		time.Sleep(200 * time.Millisecond)
		fnErr = e.env.ExecTx(ctx, tx, `UPDATE accounts SET n = n + 1 WHERE id = 2`) // ignored
		_, _ = e.charge("k", 1, &calls)(ctx, tx)
		return 1, nil
	})
	if err := <-other; err != nil {
		t.Fatal(err)
	}
	if fnErr == nil || !strings.Contains(fnErr.Error(), "1213") {
		t.Fatalf("fn's second update: %v; the test wants it to be the deadlock victim (1213)", fnErr)
	}
	if !errors.Is(err, idempotency.ErrTransactionEnded) {
		t.Fatalf("after a deadlock fn ignored: %v; want ErrTransactionEnded", err)
	}
	if e.keys(t) != 0 {
		t.Fatal("a key was stored for a call whose transaction had ended")
	}
}

// testFnEndsTransaction: fn that commits or rolls back its transaction
// itself (GORM's Commit on the key's transaction, an Exec of COMMIT or
// ROLLBACK) breaks the protocol's atomicity. Every store must say so
// (ErrTransactionEnded), never report success or "nothing was committed"
// when something was, and must not leave the key stuck: where fn's commit
// also committed the claimed key row (MySQL, SQLite), the call fills it
// with fn's value, and a retry replays it; on Postgres nothing marks the
// key, and a retry runs fn again.
func testFnEndsTransaction[TTx any](t *testing.T, e *suite[TTx]) {
	s := e.store(t)
	ends := []struct {
		name string
		end  func(ctx context.Context, tx TTx) error
		// kept: fn's charge, made before the end, committed.
		kept bool
	}{
		{"ClientCommit", func(ctx context.Context, tx TTx) error { return e.env.Commit(ctx, tx) }, true},
		{"ClientRollback", func(ctx context.Context, tx TTx) error { return e.env.Rollback(ctx, tx) }, false},
		{"ExecCommit", func(ctx context.Context, tx TTx) error { return e.env.ExecTx(ctx, tx, "COMMIT") }, true},
		{"ExecRollback", func(ctx context.Context, tx TTx) error { return e.env.ExecTx(ctx, tx, "ROLLBACK") }, false},
	}
	for _, end := range ends {
		t.Run(end.name, func(t *testing.T) {
			key := "end-" + end.name
			var (
				calls   atomic.Int64
				refused error
			)
			_, err := idempotency.Do(ctx, s, key, nil, func(ctx context.Context, tx TTx) (receipt, error) {
				r, err := e.charge(key, 1, &calls)(ctx, tx)
				if err != nil {
					return r, err
				}
				refused = end.end(ctx, tx)
				return r, refused
			})
			if refused != nil {
				// The store would not let fn end its transaction (the pgx
				// store's guarded transaction): fn's error rolled it all
				// back.
				if !errors.Is(err, refused) || e.charges(t, key) != 0 || e.keys(t) != 0 {
					t.Fatalf("fn's %s was refused with %v; Do returned %v, with %d charges and %d keys; want fn's error and nothing stored", end.name, refused, err, e.charges(t, key), e.keys(t))
				}
				return
			}
			if !errors.Is(err, idempotency.ErrTransactionEnded) {
				t.Fatalf("fn ended its own transaction: %v; want ErrTransactionEnded", err)
			}
			if strings.Contains(err.Error(), "nothing was") && end.kept {
				t.Errorf("the error says nothing was committed, but fn's charge was: %v", err)
			}
			want := 0
			if end.kept {
				want = 1
			}
			if got := e.charges(t, key); got != want {
				t.Fatalf("%d charges after fn's own %s; want %d", got, end.name, want)
			}
			// A retry is not stuck: it replays what committed, or runs fn.
			r, err := idempotency.Run(ctx, s, key, nil, e.charge(key, 1, &calls))
			if err != nil {
				t.Fatalf("a retry after fn's own %s: %v; the key must not be stuck", end.name, err)
			}
			if end.kept && e.kind != "postgres" && !r.Replayed {
				t.Errorf("a retry ran fn again (%d charges), though the first call's charge and key committed", e.charges(t, key))
			}
		})
	}

	// fn that commits itself and then fails leaves, where the claim is a
	// row, a claim with no value: a later call is told so, rather than
	// wait for it or run fn again.
	t.Run("CommitThenFail", func(t *testing.T) {
		var (
			calls   atomic.Int64
			refused error
		)
		_, err := idempotency.Do(ctx, s, "end-then-fail", nil, func(ctx context.Context, tx TTx) (receipt, error) {
			if _, err := e.charge("end-then-fail", 1, &calls)(ctx, tx); err != nil {
				return receipt{}, err
			}
			if refused = e.env.Commit(ctx, tx); refused != nil {
				return receipt{}, refused
			}
			return receipt{}, errDeclined
		})
		if refused != nil {
			return // the store would not let fn commit (see above)
		}
		if !errors.Is(err, errDeclined) {
			t.Fatalf("got %v; want fn's error", err)
		}
		_, err = idempotency.Do(ctx, s, "end-then-fail", nil, e.charge("end-then-fail", 1, &calls))
		switch {
		case e.kind == "postgres" && err != nil:
			t.Fatalf("a later call on Postgres, where nothing marks the key: %v; want fn run", err)
		case e.kind != "postgres" && !errors.Is(err, idempotency.ErrTransactionEnded):
			t.Fatalf("a later call that finds a claim committed without a value: %v; want ErrTransactionEnded", err)
		}
	})

	// InTx: fn's own commit is not "nothing was committed".
	t.Run("InTx", func(t *testing.T) {
		var (
			calls   atomic.Int64
			refused error
		)
		err := idempotency.InTx(ctx, s, func(ctx context.Context, tx TTx) error {
			if _, err := e.charge("intx", 1, &calls)(ctx, tx); err != nil {
				return err
			}
			refused = e.env.Commit(ctx, tx)
			return refused
		})
		if refused != nil {
			if !errors.Is(err, refused) || e.charges(t, "intx") != 0 {
				t.Fatalf("fn's commit was refused with %v; InTx returned %v, with %d charges; want fn's error and nothing committed", refused, err, e.charges(t, "intx"))
			}
			return
		}
		if !errors.Is(err, idempotency.ErrTransactionEnded) {
			t.Fatalf("InTx whose fn committed itself: %v; want ErrTransactionEnded", err)
		}
		if e.charges(t, "intx") != 1 {
			t.Fatalf("%d charges; want fn's one", e.charges(t, "intx"))
		}
	})
}

// testDoTxExpiredKey: a joined call that finds its key expired but not yet
// pruned clears it inside the caller's transaction, never on another
// connection: on SQLite the caller's transaction holds the only write lock
// (and, with one connection, the only connection). (On MySQL and Postgres a joined call may read a
// key outside the caller's transaction, whose snapshot can be older: it
// needs a second connection.)
func testDoTxExpiredKey[TTx any](t *testing.T, e *suite[TTx]) {
	p := Pool{}
	if e.kind == "sqlite" {
		p.MaxConns = 1
	}
	env := e.env.Reopen(t, p)
	s := env.NewStore(t, idempotency.WithTTL(200*time.Millisecond), idempotency.WithWait(2*time.Second))
	var calls atomic.Int64
	charge := func(ctx context.Context, tx TTx) (int, error) {
		calls.Add(1)
		return 1, env.Charge(ctx, tx, "expired", 1)
	}
	if _, err := idempotency.Do(ctx, s, "k", nil, charge); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	tx, err := env.Begin(cctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Rollback(ctx, tx) }()
	began := time.Now()
	r, err := idempotency.RunTx(cctx, tx, s, "k", nil, charge)
	if err != nil || r.Replayed {
		t.Fatalf("DoTx on an expired key after %v: %v, replayed %v; want a fresh run", time.Since(began).Round(time.Millisecond), err, r.Replayed)
	}
	if err := env.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 || Charges(t, env, "expired") != 2 || Keys(t, env) != 1 {
		t.Errorf("fn ran %d times, %d charges, %d keys; want 2, 2, 1", calls.Load(), Charges(t, env, "expired"), Keys(t, env))
	}
}

// testInTxAbortedTransaction: on Postgres an error fn ignores aborts the
// transaction, and COMMIT then rolls it back (lib/pq and pgx say so in
// errors of their own). InTx must report a definite failure, not an
// unknown outcome.
func testInTxAbortedTransaction[TTx any](t *testing.T, e *suite[TTx]) {
	e.env.Exec(t, `CREATE TABLE uniq (id INTEGER PRIMARY KEY)`)
	s := e.store(t)
	var calls atomic.Int64
	err := idempotency.InTx(ctx, s, func(ctx context.Context, tx TTx) error {
		if _, err := e.charge("aborted", 1, &calls)(ctx, tx); err != nil {
			return err
		}
		_ = e.env.ExecTx(ctx, tx, `INSERT INTO uniq VALUES (1), (1)`) // an error fn ignores
		return nil
	})
	if err == nil || errors.Is(err, idempotency.ErrOutcomeUnknown) || errors.Is(err, idempotency.ErrTransactionEnded) {
		t.Fatalf("InTx after an error fn ignored: %v; want a definite failure (nothing committed)", err)
	}
	if e.charges(t, "aborted") != 0 {
		t.Fatalf("%d charges; want none", e.charges(t, "aborted"))
	}
}
