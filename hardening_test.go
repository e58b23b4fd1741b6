package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

// holdKey starts a call on key whose fn sleeps for hold, and returns once
// fn is running (the key is claimed) with a channel of the call's error.
func holdKey(t *testing.T, s *idempotency.Store, key string, hold time.Duration) <-chan error {
	t.Helper()
	claimed := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := idempotency.Do(ctx, s, key, nil, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
			close(claimed)
			time.Sleep(hold)
			return 1, nil
		})
		done <- err
	}()
	select {
	case <-claimed:
	case err := <-done:
		t.Fatalf("the holder of %s failed: %v", key, err)
	}
	return done
}

// TestWaitingTwinsLeaveThePool: twins waiting for a slow holder must not
// keep pooled connections for their wait, so other keys go on. With four
// connections, one holder whose fn sleeps 3s and three twins, a call on
// another key with a 2s budget succeeds. (Not on SQLite: there the holder
// has the database's only write lock, and every writer waits for it.)
func TestWaitingTwinsLeaveThePool(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		if e.Kind == "sqlite" {
			t.Skip("SQLite has one writer at a time: a call on another key waits for the holder's write lock whatever the pool")
		}
		e.db.SetMaxOpenConns(4)
		s := e.store(t, idempotency.WithWait(10*time.Second))
		holder := holdKey(t, s, "slow", 3*time.Second)
		twins := make(chan error, 3)
		for range 3 {
			go func() {
				r, err := idempotency.Run(ctx, s, "slow", nil, func(context.Context, *sqlx.Tx) (int, error) { return 2, nil })
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
		v, err := idempotency.Do(budget, s, "other", nil, func(context.Context, *sqlx.Tx) (int, error) { return 3, nil })
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
	})
}

// TestQueuedCallObeysContext: a call waiting for a connection from a full
// pool gives up when its context ends.
func TestQueuedCallObeysContext(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		e.db.SetMaxOpenConns(2)
		s := e.store(t)
		var conns []*sqlx.Conn
		for range 2 {
			c, err := e.db.Connx(ctx)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		release := time.AfterFunc(5*time.Second, func() {
			for _, c := range conns {
				_ = c.Close()
			}
		})
		defer release.Stop()
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		budget, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		began := time.Now()
		_, err := idempotency.Do(budget, s, "queued", nil, func(context.Context, *sqlx.Tx) (int, error) { return 1, nil })
		took := time.Since(began)
		if !errors.Is(err, context.DeadlineExceeded) || took > 2*time.Second {
			t.Fatalf("a call behind a full pool: %v after %v; want context.DeadlineExceeded within its 300ms budget", err, took)
		}
	})
}

// TestQueuedCallObeysContextOnSQLiteLock: on SQLite a call waits for the
// write lock in BEGIN (busy_timeout); its context still ends the wait.
func TestQueuedCallObeysContextOnSQLiteLock(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		if e.Kind != "sqlite" {
			t.Skip("the write lock is SQLite's")
		}
		s := e.store(t)
		holder := holdKey(t, s, "writer", 2*time.Second)
		budget, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		began := time.Now()
		_, err := idempotency.Do(budget, s, "other", nil, func(context.Context, *sqlx.Tx) (int, error) { return 1, nil })
		took := time.Since(began)
		if !errors.Is(err, context.DeadlineExceeded) || took > 1500*time.Millisecond {
			t.Errorf("a call waiting for SQLite's write lock: %v after %v; want context.DeadlineExceeded within its 300ms budget", err, took)
		}
		if err := <-holder; err != nil {
			t.Fatal(err)
		}
	})
}

// TestLongWait: a wait bound of a month is a valid setting (Postgres's
// lock_timeout stops at about 24 days).
func TestLongWait(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t, idempotency.WithWait(30*24*time.Hour))
		holder := holdKey(t, s, "k", 300*time.Millisecond)
		r, err := idempotency.Run(ctx, s, "k", nil, func(context.Context, *sqlx.Tx) (int, error) { return 2, nil })
		if err != nil || !r.Replayed || r.Value != 1 {
			t.Fatalf("a twin with a month's wait: %+v, %v; want a replay of 1", r, err)
		}
		if err := <-holder; err != nil {
			t.Fatal(err)
		}
	})
}

// TestTTLCountsFromCommit: a key replays for its whole TTL after its call
// committed, however long fn took.
func TestTTLCountsFromCommit(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t, idempotency.WithTTL(time.Second))
		var calls atomic.Int64
		slow := func(ctx context.Context, tx *sqlx.Tx) (receipt, error) {
			r, err := charge("k", 1, &calls)(ctx, tx)
			time.Sleep(1200 * time.Millisecond)
			return r, err
		}
		if _, err := idempotency.Do(ctx, s, "k", nil, slow); err != nil {
			t.Fatal(err)
		}
		r, err := idempotency.Run(ctx, s, "k", nil, charge("k", 1, &calls))
		if err != nil || !r.Replayed || calls.Load() != 1 {
			t.Fatalf("right after a call that took longer than the TTL: %v, replayed %v, fn ran %d times; want a replay", err, r.Replayed, calls.Load())
		}
	})
}

// undecodable encodes to JSON that cannot be decoded back: an interface.
type undecodable struct {
	Err error `json:"err"`
}

// TestValueThatDoesNotDecode: a value whose JSON cannot be decoded into T
// would be stored and then fail every call; it must commit nothing.
func TestValueThatDoesNotDecode(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx *sqlx.Tx) (undecodable, error) {
			_, err := charge("k", 1, &calls)(ctx, tx)
			return undecodable{Err: errDeclined}, err
		})
		if err == nil || !strings.Contains(err.Error(), "nothing was committed") {
			t.Fatalf("a value that does not decode: %v; want an error that says nothing was committed", err)
		}
		if e.charges(t, "k") != 0 || e.keys(t) != 0 {
			t.Fatalf("%d charges and %d keys; want the call rolled back", e.charges(t, "k"), e.keys(t))
		}
		if _, err := idempotency.Do(ctx, s, "k", nil, charge("k", 1, &calls)); err != nil {
			t.Fatalf("a retry with a value that decodes: %v", err)
		}
	})
}

// TestTransactionEndedUnderFn: when the database ends fn's transaction and
// fn ignores the error, fn's later statements run outside it. The call must
// say so (ErrTransactionEnded), not report a failure that is safe to retry.
// A ROLLBACK sent through tx does what MySQL does on a deadlock and SQLite
// on a full disk; on Postgres an error aborts the transaction instead, and
// nothing escapes.
func TestTransactionEndedUnderFn(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		var calls atomic.Int64
		if e.Kind == "postgres" {
			if _, err := e.db.Exec(`CREATE TABLE uniq (id INTEGER PRIMARY KEY)`); err != nil {
				t.Fatal(err)
			}
			_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
				_, _ = charge("k", 1, &calls)(ctx, tx)
				_, _ = tx.ExecContext(ctx, `INSERT INTO uniq VALUES (1), (1)`) // an error fn ignores
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
		_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
			if _, err := tx.ExecContext(ctx, "ROLLBACK"); err != nil {
				return 0, err
			}
			_, _ = charge("k", 1, &calls)(ctx, tx) // now outside any transaction
			return 1, nil
		})
		if !errors.Is(err, idempotency.ErrTransactionEnded) {
			t.Fatalf("fn went on after its transaction ended: %v; want ErrTransactionEnded", err)
		}
		if e.keys(t) != 0 {
			t.Fatal("a key was stored for a call whose transaction had ended")
		}
	})
}

// TestSwallowedDeadlockInFn: on MySQL and MariaDB a deadlock inside fn rolls
// its transaction back; an fn that ignores the error and writes on writes
// outside it. Do must report ErrTransactionEnded, never a safe failure.
func TestSwallowedDeadlockInFn(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		if e.Kind != "mysql" {
			t.Skip("InnoDB ends a transaction on a deadlock; Postgres aborts it, and SQLite has one writer")
		}
		for _, q := range []string{`CREATE TABLE accounts (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)`,
			`INSERT INTO accounts VALUES (1, 0), (2, 0)`, `CREATE TABLE ballast (id INTEGER PRIMARY KEY)`} {
			if _, err := e.db.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
		s := e.store(t)
		var calls atomic.Int64
		locked1 := make(chan struct{})
		other := make(chan error, 1)
		go func() {
			<-locked1
			tx, err := e.db.BeginTxx(ctx, nil)
			if err != nil {
				other <- err
				return
			}
			defer func() { _ = tx.Rollback() }()
			for i := range 300 {
				if _, err := tx.Exec(`INSERT INTO ballast VALUES (?)`, i); err != nil {
					other <- err
					return
				}
			}
			if _, err := tx.Exec(`UPDATE accounts SET n = n + 1 WHERE id = 2`); err != nil {
				other <- err
				return
			}
			if _, err := tx.Exec(`UPDATE accounts SET n = n + 1 WHERE id = 1`); err != nil { // waits for fn
				other <- err
				return
			}
			other <- tx.Commit()
		}()
		var fnErr error
		_, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
			if _, err := tx.ExecContext(ctx, `UPDATE accounts SET n = n + 1 WHERE id = 1`); err != nil {
				return 0, err
			}
			close(locked1)
			// The other transaction, heavier so that InnoDB picks this one as
			// the victim, holds row 2 and waits for row 1.
			time.Sleep(500 * time.Millisecond)
			_, fnErr = tx.ExecContext(ctx, `UPDATE accounts SET n = n + 1 WHERE id = 2`) // ignored
			_, _ = charge("k", 1, &calls)(ctx, tx)
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
	})
}

// TestCallEndSeesPanic: a call whose fn panics ends as Panicked, not as
// Executed, and the panic goes on to the caller.
func TestCallEndSeesPanic(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		var events []idempotency.CallEvent
		s := e.store(t, idempotency.WithHooks(idempotency.Hooks{
			CallEnd: func(_ context.Context, ev idempotency.CallEvent) { events = append(events, ev) },
		}))
		func() {
			defer func() {
				if r := recover(); r != "boom" {
					t.Errorf("recovered %v, want the panic to go on", r)
				}
			}()
			_, _ = idempotency.Do(ctx, s, "k", nil, func(context.Context, *sqlx.Tx) (int, error) { panic("boom") })
		}()
		if len(events) != 1 || events[0].Outcome != idempotency.Panicked || events[0].Err == nil {
			t.Fatalf("events %+v; want one, Panicked, with an error", events)
		}
	})
}
