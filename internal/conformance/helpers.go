package conformance

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
)

// suite is what a behaviour test gets: the database and its kind.
type suite[TTx any] struct {
	kind       string
	optimistic bool // see Harness.Optimistic
	env        Env[TTx]
}

var (
	ctx         = context.Background()
	errDeclined = errors.New("card declined")
)

// receipt is a typical value of fn: it carries a time, so a replay that
// did not go through JSON would be told apart.
type receipt struct {
	ID     string    `json:"id"`
	Amount int       `json:"amount"`
	At     time.Time `json:"at"`
}

// charge is a typical fn: one business row through tx. It counts its runs
// in calls.
func (e *suite[TTx]) charge(ref string, amount int, calls *atomic.Int64) func(context.Context, TTx) (receipt, error) {
	return func(ctx context.Context, tx TTx) (receipt, error) {
		calls.Add(1)
		if err := e.env.Charge(ctx, tx, ref, amount); err != nil {
			return receipt{}, err
		}
		return receipt{ID: "ch_" + ref, Amount: amount, At: time.Now().UTC()}, nil
	}
}

func (e *suite[TTx]) charges(t testing.TB, ref string) int {
	t.Helper()
	return Charges(t, e.env, ref)
}

func (e *suite[TTx]) keys(t testing.TB) int {
	t.Helper()
	return Keys(t, e.env)
}

// Charges counts the rows of charges written under ref.
func Charges[TTx any](t testing.TB, e Env[TTx], ref string) int {
	t.Helper()
	return e.Count(t, `SELECT COUNT(*) FROM charges WHERE ref = `+quote(ref))
}

// Keys counts the rows of the key table, expired or not.
func Keys[TTx any](t testing.TB, e Env[TTx]) int {
	t.Helper()
	return e.Count(t, `SELECT COUNT(*) FROM idempotency_keys`)
}

// quote makes s an SQL string literal, for the suite's own keys.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// isolationLevels are the levels a user may choose on the kind's database.
func isolationLevels(kind string) []sql.IsolationLevel {
	switch kind {
	case "postgres":
		return []sql.IsolationLevel{sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelSerializable}
	case "mysql":
		return []sql.IsolationLevel{sql.LevelReadCommitted, sql.LevelRepeatableRead}
	}
	return []sql.IsolationLevel{sql.LevelDefault}
}

// holdKey starts a call on key whose fn sleeps for hold, and returns once
// fn is running (the key is claimed) with a channel of the call's error.
func holdKey[TTx any](t *testing.T, s *idempotency.TxStore[TTx], key string, hold time.Duration) <-chan error {
	t.Helper()
	return holdCall(t, s, key, func() { time.Sleep(hold) }, func(context.Context, TTx) (int, error) { return 1, nil })
}

// holdCall starts a call on key whose fn runs work, then wait, and returns
// work's answer; holdCall returns once work is running (the key is claimed)
// with a channel of the call's error.
func holdCall[TTx, V any](t *testing.T, s *idempotency.TxStore[TTx], key string, wait func(), work func(context.Context, TTx) (V, error)) <-chan error {
	t.Helper()
	claimed := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := idempotency.Do(ctx, s, key, nil, func(ctx context.Context, tx TTx) (V, error) {
			r, err := work(ctx, tx)
			close(claimed)
			wait()
			return r, err
		})
		done <- err
	}()
	waitClaimed(t, claimed, done)
	return done
}

// waitClaimed waits until a holder's fn runs (claimed is closed), and fails
// t if the holder's call ends first: a test that waited for it would hang.
func waitClaimed(t *testing.T, claimed <-chan struct{}, holder <-chan error) {
	t.Helper()
	select {
	case <-claimed:
	case err := <-holder:
		t.Fatalf("the holder's call ended before its fn ran: %v", err)
	}
}

// recorder is a slog.Handler that keeps every record.
type recorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	return nil
}

// sum adds up attr over the records whose message is msg.
func (r *recorder) sum(msg, attr string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, rec := range r.records {
		if rec.Message != msg {
			continue
		}
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == attr {
				n += a.Value.Int64()
			}
			return true
		})
	}
	return n
}

func (r *recorder) has(msg string, attrs ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.records {
		if rec.Message != msg {
			continue
		}
		seen := map[string]bool{}
		rec.Attrs(func(a slog.Attr) bool { seen[a.Key] = true; return true })
		all := true
		for _, a := range attrs {
			all = all && seen[a]
		}
		if all {
			return true
		}
	}
	return false
}

func (r *recorder) messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var m []string
	for _, rec := range r.records {
		m = append(m, rec.Message)
	}
	return m
}
