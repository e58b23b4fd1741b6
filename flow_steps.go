package idempotency

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/exactlyonce/idempotency/dialects"
)

// Steps is one run of a flow, as its fn sees it: pass it to Step and Call.
// It belongs to the run: use it on fn's goroutine, and not after fn
// returned.
type Steps[TTx any] struct {
	run      *flowRun[TTx]
	ctx      context.Context
	recorded []dialects.StepRow // by a run before this one
	n        int                // steps done (recorded or replayed) in this run
	used     map[string]bool
	ended    bool
}

// Key returns the flow's key.
func (s *Steps[TTx]) Key() string { return s.run.k.Key }

// Scope returns the scope of the store the flow runs on.
func (s *Steps[TTx]) Scope() string { return s.run.k.Scope }

// Step runs fn as the flow's next step, in a transaction that also checks
// that this run still owns the flow and records fn's value: fn's writes and
// the record commit together, or neither does. A step recorded by an
// earlier run returns its recorded value (decoded from JSON, as a fresh
// value is too) without running fn.
//
// fn must make its database writes through tx and must not commit or roll
// it back. When fn returns an error, its writes roll back and the error is
// returned unchanged; a FinalError returned by the flow's fn is then
// stored as the flow's answer. Serialization failures and deadlocks run fn
// again in a new transaction (WithMaxRetries). When another owner has taken
// the flow over, Step returns ErrFlowTakenOver and fn's writes roll back.
//
// On Postgres and SQLite the step's transaction commits when the flow goes
// on (the next Step or Call) or ends, where it also stores the flow's
// value: a flow of n steps commits n transactions rather than n+1, and
// holds its connection from a step to what follows it. A commit that
// rolls back there and may pass on another try runs fn of the flow again
// from its recorded steps.
func Step[V, TTx any](s *Steps[TTx], name string, fn func(ctx context.Context, tx TTx) (V, error)) (V, error) {
	var zero V
	if fn == nil {
		return zero, fmt.Errorf("idempotency: step %q with a nil fn: pass the function that does the step", name)
	}
	v, done, err := replayStep[V](s, name)
	if done || err != nil {
		return v, err
	}
	var (
		value []byte
		fresh V
	)
	r := s.run
	what := "step " + quoteName(name)
	work := func(ctx context.Context, tx TTx) error {
		v, err := fn(ctx, tx)
		if err != nil {
			return err
		}
		if value, fresh, err = roundTrip(v); err != nil {
			return fmt.Errorf("idempotency: flow %q, step %q: %w", r.flow, name, err)
		}
		return nil
	}
	// The values of the calls since the last step are recorded with it.
	rows := func() []dialects.StepRow {
		return append(r.held, dialects.StepRow{Seq: s.n, Name: name, Value: value})
	}
	end := func(ctx context.Context, tx TTx, f dialects.Fence) error {
		if !r.leaveOpen {
			return r.fd.RecordStep(ctx, tx, r.k, f, rows(), r.lease)
		}
		// Left open: it commits with its records when the flow goes on,
		// or stores the flow's value when it ends.
		r.open, r.tx, r.fence, r.pending = true, tx, f, rows()
		return nil
	}
	done, err = r.first(s.ctx, what, work, end)
	if !done && err == nil {
		// The step before, left open, commits first.
		if err := r.commit(s.ctx, what); err != nil {
			return zero, err
		}
		err = r.transact(s.ctx, what, work, end)
	}
	if err != nil {
		return zero, err
	}
	r.held = nil
	if r.open {
		// Reported when it commits (flowRun.commit, or the flow's end).
		s.used[name] = true
		s.n++
		return fresh, nil
	}
	s.recordedNow(name, false)
	return fresh, nil
}

// Call runs fn, a call to another system, as the flow's next step, outside
// any transaction, and records its value before the flow goes on. fn gets
// the key to send to the other system: DownstreamKey of the flow's scope,
// its key, and the flow's and the call's names, the same on every run. A
// call recorded by an earlier run returns its recorded value without
// running fn.
//
// Where steps leave their transactions open (Postgres, SQLite) the value
// is recorded in the transaction of the next step, with its writes, or
// when the flow stops; on MySQL, MariaDB and TiDB at once, in a
// transaction of its own. Either way nothing that depends on the value
// commits without its record.
//
// fn may run more than once for one key: when this run dies, or loses the
// flow to another owner, after fn returned and before its value was
// recorded, the next run calls it again with the same key. The other
// system must therefore honour keys: store each with its first answer and
// give that answer to a repeat, for longer than WithLease plus the time
// RunCompleter may take to resume the flow. When fn returns an error,
// nothing is recorded and the error is returned unchanged.
func Call[V, TTx any](s *Steps[TTx], name string, fn func(ctx context.Context, key string) (V, error)) (V, error) {
	var zero V
	if fn == nil {
		return zero, fmt.Errorf("idempotency: call %q with a nil fn: pass the function that makes the call", name)
	}
	v, done, err := replayStep[V](s, name)
	if done || err != nil {
		return v, err
	}
	r := s.run
	// The step before, left open, commits before the call is made (and
	// with it the flow's row, when the flow began with it).
	if err := r.commit(s.ctx, "call "+quoteName(name)); err != nil {
		return zero, err
	}
	v, err = fn(s.ctx, DownstreamKey(r.k.Scope, r.k.Key, r.flow+"/"+name))
	if err != nil {
		return zero, err
	}
	value, fresh, err := roundTrip(v)
	if err != nil {
		return zero, fmt.Errorf("idempotency: flow %q, call %q: %w", r.flow, name, err)
	}
	row := dialects.StepRow{Seq: s.n, Name: name, Value: value}
	if r.leaveOpen {
		// Recorded with the next step, in its transaction, or when the
		// flow stops; a flow that ends here has no use for it. Whatever
		// depends on the value commits with it, and a crash that loses it
		// makes the call again, with the same key.
		r.held = append(r.held, row)
		s.used[name] = true
		s.n++
		return fresh, nil
	}
	if err := r.record(s.ctx, "call "+quoteName(name), []dialects.StepRow{row}); err != nil {
		return zero, err
	}
	s.recordedNow(name, false)
	return fresh, nil
}

func quoteName(name string) string { return fmt.Sprintf("%q", name) }

// replayStep checks name against the run and the recorded steps, and
// returns the recorded value when the step was recorded (done).
func replayStep[V, TTx any](s *Steps[TTx], name string) (v V, done bool, err error) {
	if s == nil || s.run == nil {
		return v, false, errors.New("idempotency: nil *Steps: use the one the flow's fn was given")
	}
	r := s.run
	switch {
	case s.ended:
		return v, false, fmt.Errorf("idempotency: flow %q: step %q after the flow's fn returned: use Steps only within fn", r.flow, name)
	case r.again != nil:
		return v, false, fmt.Errorf("idempotency: flow %q: step %q after an earlier step rolled back (return the errors of Step and Call): %w", r.flow, name, r.again.err)
	case name == "":
		return v, false, fmt.Errorf("idempotency: flow %q: a step with no name: name every step, uniquely within the flow", r.flow)
	case s.used[name]:
		return v, false, fmt.Errorf("%w: flow %q: the step name %q is used twice in one run; give each step its own name", ErrStepOrder, r.flow, name)
	case s.n >= len(s.recorded):
		return v, false, nil
	}
	rec := s.recorded[s.n]
	if rec.Name != name {
		return v, false, fmt.Errorf("%w: flow %q, key %q: step %d is %q, but %q was recorded there; a flow must run its steps in the same order on every run",
			ErrStepOrder, r.flow, r.k.Key, s.n+1, name, rec.Name)
	}
	if err := json.Unmarshal(rec.Value, &v); err != nil {
		return v, false, fmt.Errorf("idempotency: flow %q, step %q: the recorded value cannot be decoded into %T: %w", r.flow, name, v, err)
	}
	s.recordedNow(name, true)
	return v, true, nil
}

// recordedNow counts a step done, and reports it.
func (s *Steps[TTx]) recordedNow(name string, replayed bool) {
	s.used[name] = true
	s.n++
	r := s.run
	kind := FlowStepRecorded
	if replayed {
		kind = FlowStepReplayed
	}
	r.s.flowEvent(s.ctx, FlowEvent{Kind: kind, Flow: r.flow, Scope: r.k.Scope, Key: r.k.Key, Step: name, Token: r.token})
}
