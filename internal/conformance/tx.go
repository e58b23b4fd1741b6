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
