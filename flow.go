package idempotency

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/exactlyonce/idempotency/dialects"
)

// Errors of flows; match them with errors.Is.
var (
	// ErrFlowTakenOver: this run of a flow lost its key. Its lease ran out
	// (it was paused, or a step took longer than WithLease) and another
	// caller or a completer took the flow over with a newer fencing token;
	// nothing this run tried to record after that was recorded. The other
	// owner finishes the flow: retry with the same key to get its answer.
	ErrFlowTakenOver = errors.New("idempotency: another owner took the flow over (this run's lease ran out); nothing more of this run was recorded; retry with the same key for the answer")

	// ErrStepOrder: a flow's fn ran its steps in another order than the
	// one recorded for its key, or used a step name twice in one run.
	// Steps are matched to their records by position and name, so a flow
	// must run the same steps in the same order on every run, each under
	// its own name.
	ErrStepOrder = errors.New("idempotency: the flow's steps do not match the ones recorded")
)

// Flow is a call made of steps under one key, for work that a single
// transaction cannot hold: a payment that must charge a card with a
// provider and answer with the result. Each step is recorded in the
// application's database, with its writes, by the time the flow goes on
// (on Postgres and SQLite its transaction stays open until then), so a
// retry with the same key (or RunCompleter, when nobody retries) resumes
// after the last recorded step instead of starting over; the flow's value
// is stored as the key's record and replayed as Do's are.
//
// A step (Step) is one transaction: its writes and its record commit
// together. A call (Call) reaches another system outside any transaction,
// with a key derived from the flow's key and the call's name that is the
// same on every run, so a system that honours keys acts once however often
// the call is made; its answer is recorded before the flow goes on.
//
// A run owns its key under a lease (WithLease) with a fencing token: every
// step's transaction first checks the token, so a run that was paused past
// its lease, while another took the flow over, records nothing more.
//
// Create flows once, at start-up (as package variables), so that
// RunCompleter knows them by name.
type Flow[P, T, TTx any] struct {
	name string
	fn   func(ctx context.Context, s *Steps[TTx], params P) (T, error)
}

// NewFlow returns the flow named name, which runs fn. The name is stored
// with each running flow and finds its code again after a restart: keep it
// stable, unique among a store's flows, and 1 to 255 bytes of printable
// ASCII.
//
// fn must run the same steps in the same order on every run, must return
// the errors of Step and Call (or errors that wrap them), and must reach
// the database and other systems only through its steps. It returns the
// flow's value, or an error: a FinalError (Final) is stored and replayed
// like a value; any other error leaves the flow resumable.
func NewFlow[P, T, TTx any](name string, fn func(ctx context.Context, s *Steps[TTx], params P) (T, error)) *Flow[P, T, TTx] {
	return &Flow[P, T, TTx]{name: name, fn: fn}
}

// Name returns the flow's name.
func (f *Flow[P, T, TTx]) Name() string {
	if f == nil {
		return ""
	}
	return f.name
}

// Do runs the flow for key within the store's scope, or resumes it, or
// replays its stored value, and returns its value.
//
// A new key starts the flow: its row records params and this run as the
// owner. A key whose flow finished replays its value (or its final
// failure) without running anything, and returns ErrParamsMismatch when
// params, or the flow, differ. A key whose flow is running under a live
// lease waits for it (WithWait), then replays its value, or takes it over
// once its lease ran out, or returns ErrInProgress. A key whose owner is
// gone (its lease ran out, or its run returned an error) is taken over and
// resumed: recorded steps return their values without running again.
//
// An error of fn that is not final is returned as it is, and leaves the
// flow resumable: what was recorded stays.
func (f *Flow[P, T, TTx]) Do(ctx context.Context, s *TxStore[TTx], key string, params P) (T, error) {
	r, err := f.Run(ctx, s, key, params)
	return r.Value, err
}

// Run is Do that also reports whether the value was replayed from the
// key's record rather than computed by this call.
func (f *Flow[P, T, TTx]) Run(ctx context.Context, s *TxStore[TTx], key string, params P) (Result[T], error) {
	var res Result[T]
	fd, err := f.check(s)
	if err != nil {
		return res, err
	}
	k, err := s.key(key)
	if err != nil {
		return res, err
	}
	pj, err := json.Marshal(params)
	if err != nil {
		return res, badParams(err)
	}
	fp, err := Fingerprint(flowParams{Flow: f.name, Params: pj})
	if err != nil {
		return res, err
	}
	lease := s.cfg.flow.leaseOrDefault()
	var (
		polls    int
		deadline time.Time
	)
	// restarts counts the tries that started over without waiting (a
	// transient error, a row that changed under the read); waits for a
	// live lease are bounded by WithWait instead.
	for restarts := 0; ; {
		var row dialects.FlowRow
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if restarts++; restarts > maxRestarts {
			return res, fmt.Errorf("idempotency: flow %q, key %q: gave up after %d attempts that each found the flow changed under them", f.name, k.Key, restarts)
		}
		if fb, ok := fd.(dialects.FlowBeginner[TTx]); ok {
			// While most flows of late replayed (or with WithReadFirst),
			// read the key's record alone first, as Do does: a replay then
			// costs one statement.
			if s.flowReads.first() {
				rec, ok, err := s.driver.Lookup(ctx, k)
				if err == nil && ok {
					s.flowReads.saw(true)
					return f.replay(rec, fp, k)
				}
			}
			// Read, and start where nothing holds the key, in one exchange:
			// the first step runs in the transaction that holds the new row.
			fence := dialects.Fence{Token: 1, Mark: rand.Int64()}
			tx, st, err := fb.BeginFlow(ctx, k, dialects.FlowRow{Flow: f.name, Fingerprint: fp, Params: pj}, lease, fence)
			switch {
			case err != nil:
				if s.transient(ctx, err, restarts) {
					continue
				}
				return res, s.flowError(ctx, "read or start the flow", err)
			case st.Started:
				s.flowReads.saw(false)
				s.flowEvent(ctx, FlowEvent{Kind: FlowStarted, Flow: f.name, Scope: k.Scope, Key: k.Key, Token: 1})
				return f.body(ctx, s, fd, k, fp, 1, params, nil, &openTx[TTx]{tx: tx, fence: fence, undo: fb.UndoStep})
			case st.Recorded:
				s.flowReads.saw(true)
				return f.replay(st.Record, fp, k)
			case st.Running:
				row = st.Row
			case st.Held:
				// Another caller is starting it: wait as for a live lease.
				row = dialects.FlowRow{Flow: f.name, Fingerprint: fp}
			default:
				continue // a row committed after the read: read again
			}
		} else {
			rec, ok, r, running, err := lookupFlow(ctx, s, fd, k)
			if err != nil {
				if s.transient(ctx, err, restarts) {
					continue
				}
				return res, s.flowError(ctx, "read the key and the flow", err)
			}
			if ok {
				return f.replay(rec, fp, k)
			}
			if !running {
				// No flow holds the key: start one. (Reading first matters: an
				// INSERT that meets the row of a flow whose step is under way
				// waits for that step's transaction, holding a connection.)
				started, rec, ok, err := startFlow(ctx, s, fd, k, dialects.FlowRow{Flow: f.name, Fingerprint: fp, Params: pj}, lease)
				if err != nil && !started {
					if s.transient(ctx, err, restarts) {
						continue
					}
					return res, s.flowError(ctx, "start the flow", err)
				}
				if !started {
					continue // a twin started it first: read its row
				}
				// A flow that finished between the read and the insert left
				// its record and no row: look again, so as not to run it twice.
				if err != nil {
					// Started, but not run: free the key for the next caller.
					_ = fd.ReleaseFlow(context.WithoutCancel(ctx), k, 1, err.Error())
					return res, s.flowError(ctx, "read the key", err)
				}
				if ok {
					if err := fd.DropFlow(ctx, k, 1); err != nil {
						return res, s.flowError(ctx, "drop the flow started after its end", err)
					}
					return f.replay(rec, fp, k)
				}
				s.flowEvent(ctx, FlowEvent{Kind: FlowStarted, Flow: f.name, Scope: k.Scope, Key: k.Key, Token: 1})
				return f.body(ctx, s, fd, k, fp, 1, params, nil, nil)
			}
			row = r
		}
		switch {
		case row.Flow != f.name || !bytes.Equal(row.Fingerprint, fp):
			return res, fmt.Errorf("%w: key %q", ErrParamsMismatch, k.Key)
		case row.Expired:
			took, err := fd.TakeOverFlow(ctx, k, row.Token, lease)
			if err != nil && !s.transient(ctx, err, restarts) {
				return res, s.flowError(ctx, "take the flow over", err)
			}
			if took {
				token := row.Token + 1
				// An orphan row beside the key's record: replay the record.
				if rec, done, err := s.driver.Lookup(ctx, k); err == nil && done {
					if err := fd.DropFlow(ctx, k, token); err != nil {
						return res, s.flowError(ctx, "drop the flow's row left after its end", err)
					}
					return f.replay(rec, fp, k)
				}
				steps, err := fd.FlowSteps(ctx, k)
				if err != nil {
					// Taken over, but unread: leave it to the next caller.
					_ = fd.ReleaseFlow(context.WithoutCancel(ctx), k, token, err.Error())
					return res, s.flowError(ctx, "read the flow's steps", err)
				}
				s.flowEvent(ctx, FlowEvent{Kind: FlowTakenOver, Flow: f.name, Scope: k.Scope, Key: k.Key, Token: token, Resumes: row.Resumes + 1})
				return f.body(ctx, s, fd, k, fp, token, params, steps, nil)
			}
			// Another took it first, or a step of its owner is under way
			// (its row is locked): wait, as for a live lease.
		}
		// The owner's lease is alive: wait for its record, or for the
		// lease to run out, holding no connection meanwhile.
		restarts--
		if polls == 0 {
			deadline = time.Now().Add(s.cfg.wait)
		}
		polls++
		left := time.Until(deadline)
		if left <= 0 {
			return res, fmt.Errorf("%w: key %q: flow %q is running under another owner's lease (waited %v)", ErrInProgress, k.Key, f.name, s.cfg.wait)
		}
		if err := sleep(ctx, min(pause(polls), left)); err != nil {
			return res, err
		}
	}
}

// lookupFlow reads the key's record and, without one, its flow's row.
func lookupFlow[TTx any](ctx context.Context, s *TxStore[TTx], fd dialects.FlowDriver[TTx], k dialects.Key) (dialects.Record, bool, dialects.FlowRow, bool, error) {
	rec, ok, err := s.driver.Lookup(ctx, k)
	if err != nil || ok {
		return rec, ok, dialects.FlowRow{}, false, err
	}
	row, running, err := fd.ReadFlow(ctx, k)
	return rec, false, row, running, err
}

// startFlow inserts the flow's row and reads the key's record again. An
// error with started set is the read's.
func startFlow[TTx any](ctx context.Context, s *TxStore[TTx], fd dialects.FlowDriver[TTx], k dialects.Key, row dialects.FlowRow, lease time.Duration) (started bool, rec dialects.Record, recorded bool, err error) {
	if started, err = fd.InsertFlow(ctx, k, row, lease); err != nil || !started {
		return started, rec, false, err
	}
	rec, recorded, err = s.driver.Lookup(ctx, k)
	return true, rec, recorded, err
}

// flowParams is what a flow's fingerprint covers: its name and params, so
// that another flow, or Do, with the same key is a mismatch.
type flowParams struct {
	Flow   string          `json:"flow"`
	Params json.RawMessage `json:"params"`
}

// check returns the store's flow driver, or says why the flow cannot run.
func (f *Flow[P, T, TTx]) check(s *TxStore[TTx]) (dialects.FlowDriver[TTx], error) {
	if f == nil || f.fn == nil {
		return nil, errors.New("idempotency: a nil flow, or one with a nil fn: create it with NewFlow")
	}
	if err := ValidateKey(f.name); err != nil {
		return nil, fmt.Errorf("idempotency: flow name %q: %w (name flows as keys are named)", f.name, err)
	}
	return flowDriver(s)
}

// flowDriver returns the store's driver as a FlowDriver.
func flowDriver[TTx any](s *TxStore[TTx]) (dialects.FlowDriver[TTx], error) {
	if s == nil {
		return nil, errors.New("idempotency: nil *Store: create one with idempotency.New")
	}
	fd, ok := s.driver.(dialects.FlowDriver[TTx])
	if !ok {
		return nil, fmt.Errorf("idempotency: the %s driver of this store cannot run flows (it does not implement dialects.FlowDriver)", s.driver.Name())
	}
	return fd, nil
}

// replay answers from the key's record.
func (f *Flow[P, T, TTx]) replay(rec dialects.Record, fp []byte, k dialects.Key) (Result[T], error) {
	res := Result[T]{Replayed: true}
	if _, _, err := replayOf(rec, fp, k); err != nil {
		return Result[T]{}, err
	}
	if rec.Failed {
		return res, decodeFailure(rec.Value)
	}
	if err := json.Unmarshal(rec.Value, &res.Value); err != nil {
		return Result[T]{}, fmt.Errorf("idempotency: flow %q: stored value cannot be decoded into %T: %w", f.name, res.Value, err)
	}
	return res, nil
}

// body runs fn as the owner of k under token, with the steps recorded so
// far, and ends the flow with its value or final failure. On any other
// end (an error, a panic) it records what it holds (the open step, the
// values of calls) and releases the lease, so that a retry or a completer
// can take the flow over at once.
//
// To spare commits, a step's transaction stays open after Step returns,
// and a call's value is held: the open transaction commits, with the
// records of the calls before it and of its step, when the flow goes on
// to a call or another step; the last step's transaction also stores the
// flow's value. When that deferred commit fails in a way that may pass on
// another try (a serialization failure, a deadlock), nothing of the step
// stays, and fn runs again from the recorded steps, as a resumed run does.
func (f *Flow[P, T, TTx]) body(ctx context.Context, s *TxStore[TTx], fd dialects.FlowDriver[TTx], k dialects.Key, fp []byte, token int64, params P, recorded []dialects.StepRow, begun *openTx[TTx]) (res Result[T], err error) {
	r := &flowRun[TTx]{s: s, fd: fd, k: k, flow: f.name, token: token, lease: s.cfg.flow.leaseOrDefault(), fp: fp}
	if sf, ok := fd.(dialects.StepFinisher); ok {
		r.leaveOpen = sf.FinishInStep()
	}
	if begun != nil {
		r.open, r.fresh, r.tx, r.fence, r.undo = true, true, begun.tx, begun.fence, begun.undo
	}
	finished := false
	var st *Steps[TTx]
	defer func() {
		if st != nil {
			st.ended = true
		}
		if finished {
			return
		}
		reason := "fn panicked"
		if err != nil {
			reason = err.Error()
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if rerr := r.commit(rctx, "record the last step"); rerr != nil {
			s.cfg.logger.WarnContext(ctx, "idempotency: could not record a stopped flow's last step; it runs again when the flow resumes",
				"flow", f.name, "scope", k.Scope, "key", k.Key, "err", rerr)
		}
		if held := r.held; len(held) > 0 && r.again == nil {
			r.held = nil
			if rerr := r.record(rctx, "record the last call", held); rerr != nil {
				s.cfg.logger.WarnContext(ctx, "idempotency: could not record a stopped flow's last call; it is made again, with the same key, when the flow resumes",
					"flow", f.name, "scope", k.Scope, "key", k.Key, "err", rerr)
			} else {
				r.recorded(ctx, held)
			}
		}
		if rerr := fd.ReleaseFlow(rctx, k, token, reason); rerr != nil {
			s.cfg.logger.WarnContext(ctx, "idempotency: could not release a flow's lease; it is resumed when the lease runs out",
				"flow", f.name, "scope", k.Scope, "key", k.Key, "err", rerr)
		}
		e := FlowEvent{Kind: FlowStopped, Flow: f.name, Scope: k.Scope, Key: k.Key, Token: token, Err: err}
		if err == nil {
			e.Err = errPanicked
		}
		s.flowEvent(ctx, e)
	}()

	for reruns := 0; ; reruns++ {
		if reruns > 0 {
			if reruns > s.cfg.maxRetries {
				return res, fmt.Errorf("idempotency: flow %q: gave up after %d retries: %w", f.name, reruns-1, r.again.err)
			}
			if err := sleep(ctx, backoff(reruns)); err != nil {
				return res, err
			}
			if recorded, err = fd.FlowSteps(ctx, k); err != nil {
				return res, s.flowError(ctx, "read the flow's steps", err)
			}
			r.again, r.held = nil, nil
		}
		st = &Steps[TTx]{run: r, ctx: ctx, recorded: recorded, used: make(map[string]bool)}
		var again bool
		res, again, err = f.end(ctx, st, params)
		if !again {
			finished = err == nil || errors.As(err, new(*FinalError))
			return res, err
		}
		st.ended = true
	}
}

// end runs fn once and stores its value or final failure; again reports
// that a deferred commit rolled back and fn should run again.
func (f *Flow[P, T, TTx]) end(ctx context.Context, st *Steps[TTx], params P) (res Result[T], again bool, err error) {
	r := st.run
	s, fd, k := r.s, r.fd, r.k
	v, err := f.fn(ctx, st, params)
	if r.again != nil {
		return res, true, nil
	}
	var final *FinalError
	switch {
	case err != nil && !errors.As(err, &final):
		return res, false, err
	case st.n < len(st.recorded):
		return res, false, fmt.Errorf("%w: flow %q returned after %d steps, but %d were recorded for key %q (step %d is %q)",
			ErrStepOrder, f.name, st.n, len(st.recorded), k.Key, st.n+1, st.recorded[st.n].Name)
	}
	rec := dialects.Record{Fingerprint: r.fp}
	if final != nil {
		if rec.Value, err = final.encode(); err != nil {
			return res, false, err
		}
		rec.Failed = true
	} else {
		var fresh T
		if rec.Value, fresh, err = roundTrip(v); err != nil {
			return res, false, fmt.Errorf("idempotency: flow %q: %w", f.name, err)
		}
		res.Value = fresh
	}
	finish := func(ctx context.Context, tx TTx, f dialects.Fence) error {
		return fd.FinishFlow(ctx, tx, k, f, rec, s.cfg.ttl)
	}
	// The last step's transaction, left open, stores the value (its own
	// record is not needed: the flow's rows go with it).
	tx, fence, rows, inStep := r.take()
	if inStep {
		err = r.ended(finish(ctx, tx, fence), "store the flow's value")
		var rt retryable
		if errors.As(err, &rt) {
			r.again = &rt
			return Result[T]{}, true, nil
		}
	} else {
		err = r.transact(ctx, "store the flow's value", nil, finish)
	}
	if err != nil {
		return Result[T]{}, false, err
	}
	if inStep {
		r.recorded(ctx, rows)
	}
	// The calls since the last step: the flow's end stands for their
	// records.
	r.recorded(ctx, r.held)
	r.held = nil
	e := FlowEvent{Kind: FlowFinished, Flow: f.name, Scope: k.Scope, Key: k.Key, Token: r.token}
	if final != nil {
		e.Err = final
	}
	s.flowEvent(ctx, e)
	if final != nil {
		return res, false, final
	}
	return res, false, nil
}

// roundTrip encodes v as JSON and decodes it back, so that the first
// answer has a replay's shape and a value that could not be replayed is
// never stored.
func roundTrip[V any](v V) ([]byte, V, error) {
	var fresh V
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fresh, fmt.Errorf("the value cannot be encoded as JSON (nothing was recorded): %w", err)
	}
	if err := json.Unmarshal(b, &fresh); err != nil {
		return nil, fresh, fmt.Errorf("the value encodes to JSON that cannot be decoded back into %T, so it could never be replayed (nothing was recorded): %w", fresh, err)
	}
	return b, fresh, nil
}

// flowRun is one run's ownership of a flow: its key and fencing token.
type flowRun[TTx any] struct {
	s     *TxStore[TTx]
	fd    dialects.FlowDriver[TTx]
	k     dialects.Key
	flow  string
	token int64
	lease time.Duration
	fp    []byte

	// leaveOpen: the driver lets a step's transaction stay open until
	// the flow goes on or ends (dialects.StepFinisher).
	leaveOpen bool

	// The transaction of the last step, left open (open), and its
	// step's record, which it commits.
	open    bool
	tx      TTx
	fence   dialects.Fence
	pending []dialects.StepRow
	// fresh: the open transaction is the one BeginFlow began, which holds
	// the flow's new row and runs the first step.
	fresh bool
	undo  func(ctx context.Context, tx TTx) error // the fresh transaction's UndoStep
	// held: the values of calls made since the open transaction, or the
	// last, committed, where steps leave their transactions open; the
	// next step's transaction records them with its own.
	held []dialects.StepRow
	// again is set when a deferred commit rolled back and may pass on
	// another try: fn runs again from the recorded steps.
	again *retryable
}

// take hands over the open transaction, if there is one, and the records
// it is to commit.
func (r *flowRun[TTx]) take() (tx TTx, fence dialects.Fence, rows []dialects.StepRow, ok bool) {
	if !r.open {
		return tx, fence, nil, false
	}
	tx, fence, rows = r.tx, r.fence, r.pending
	var zero TTx
	r.tx, r.open, r.fresh, r.pending = zero, false, false, nil
	return tx, fence, rows, true
}

// commit commits the open transaction with its step's record. A
// rollback that may pass on another try sets r.again.
func (r *flowRun[TTx]) commit(ctx context.Context, what string) error {
	tx, fence, rows, ok := r.take()
	if !ok {
		return nil
	}
	err := r.ended(r.fd.RecordStep(ctx, tx, r.k, fence, rows, r.lease), what)
	var rt retryable
	if errors.As(err, &rt) {
		r.again = &rt
		return fmt.Errorf("idempotency: flow %q, %s: the step before rolled back, to run again: %w", r.flow, what, rt.err)
	}
	if err == nil {
		r.recorded(ctx, rows)
	}
	return err
}

// recorded reports the steps (and calls) whose transaction committed.
func (r *flowRun[TTx]) recorded(ctx context.Context, rows []dialects.StepRow) {
	for _, row := range rows {
		r.s.flowEvent(ctx, FlowEvent{Kind: FlowStepRecorded, Flow: r.flow, Scope: r.k.Scope, Key: r.k.Key, Step: row.Name, Token: r.token})
	}
}

// transact runs one fenced transaction of the flow: BeginStep checks the
// token and extends the lease, work (if any) runs in it, and end records
// and commits. Serialization failures and deadlocks roll it back and run
// it again, as Do does (WithMaxRetries). work's own errors are returned
// unchanged.
func (r *flowRun[TTx]) transact(ctx context.Context, what string, work func(ctx context.Context, tx TTx) error, end func(ctx context.Context, tx TTx, f dialects.Fence) error) error {
	for retries := 0; ; retries++ {
		err := r.once(ctx, what, work, end)
		var again retryable
		if !errors.As(err, &again) {
			return err
		}
		if retries >= r.s.cfg.maxRetries {
			return fmt.Errorf("idempotency: flow %q, %s: gave up after %d retries: %w", r.flow, what, retries, again.err)
		}
		if err := sleep(ctx, backoff(retries+1)); err != nil {
			return err
		}
	}
}

// first runs a step in the transaction that BeginFlow left open (fresh),
// which holds the flow's new row, so that the step pays no BEGIN and no
// fence of its own; it reports done false when there is no such
// transaction. When work fails, its writes roll back to the savepoint
// after the row (UndoStep), and the row stays in the open transaction; a
// failure that may pass on another try reports done false, and the caller
// commits the row and runs the step again as any other (transact). A
// panic in work rolls the whole transaction back, the row with it.
func (r *flowRun[TTx]) first(ctx context.Context, what string, work func(ctx context.Context, tx TTx) error, end func(ctx context.Context, tx TTx, f dialects.Fence) error) (done bool, err error) {
	if !r.fresh {
		return false, nil
	}
	r.fresh = false
	tx := r.tx
	returned := false
	defer func() {
		if !returned {
			r.s.driver.Rollback(tx)
			r.take()
		}
	}()
	err = work(ctx, tx)
	if err == nil {
		err = ctx.Err()
	}
	returned = true
	if err == nil {
		tx, fence, _, _ := r.take()
		return true, r.ended(end(ctx, tx, fence), what)
	}
	if uerr := r.undo(context.WithoutCancel(ctx), tx); uerr != nil {
		// The row goes with the transaction: the flow never began.
		r.s.driver.Rollback(tx)
		r.take()
		return true, err
	}
	if ctx.Err() == nil && r.s.driver.Classify(err) == dialects.Retry {
		return false, nil
	}
	return true, err
}

// retryable is what once returns when its transaction rolled back and may
// run again.
type retryable struct{ err error }

func (r retryable) Error() string { return r.err.Error() }

// once is one try of transact.
func (r *flowRun[TTx]) once(ctx context.Context, what string, work func(ctx context.Context, tx TTx) error, end func(ctx context.Context, tx TTx, f dialects.Fence) error) error {
	d := r.s.driver
	fence := dialects.Fence{Token: r.token, Mark: rand.Int64()}
	tx, ok, err := r.fd.BeginStep(ctx, r.k, fence, r.lease)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch d.Classify(err) {
		case dialects.Retry, dialects.Busy, dialects.Lost:
			// Nothing began, or it rolled back: safe to begin again.
			return retryable{err}
		}
		return fmt.Errorf("idempotency: flow %q, %s: %w", r.flow, what, err)
	}
	if !ok {
		return fmt.Errorf("%w: flow %q, key %q, token %d: %s", ErrFlowTakenOver, r.flow, r.k.Key, r.token, what)
	}
	if work != nil {
		if err := r.work(ctx, tx, work); err != nil {
			if d.Classify(err) == dialects.Retry {
				return retryable{err}
			}
			return err
		}
	}
	return r.ended(end(ctx, tx, fence), what)
}

// ended sorts the error of a statement that ends a fenced transaction
// (RecordStep, FinishFlow): a retryable when the transaction rolled back
// and may run again.
func (r *flowRun[TTx]) ended(err error, what string) error {
	d := r.s.driver
	var ce *dialects.CommitError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, dialects.ErrTransactionEnded):
		return fmt.Errorf("%w: flow %q, key %q, %s: %w", ErrTransactionEnded, r.flow, r.k.Key, what, err)
	case errors.As(err, &ce):
		switch d.Classify(ce.Err) {
		case dialects.Retry:
			return retryable{ce.Err}
		case dialects.Unknown, dialects.Lost:
			return fmt.Errorf("%w: flow %q, key %q, %s: %w", ErrOutcomeUnknown, r.flow, r.k.Key, what, ce.Err)
		}
		return fmt.Errorf("idempotency: flow %q, %s: commit (nothing was recorded): %w", r.flow, what, ce.Err)
	case d.Classify(err) == dialects.Retry:
		return retryable{err}
	}
	return fmt.Errorf("idempotency: flow %q, %s: %w", r.flow, what, err)
}

// record records rows (the values of calls) in a fenced transaction of
// their own, retried as transact's are.
func (r *flowRun[TTx]) record(ctx context.Context, what string, rows []dialects.StepRow) error {
	return r.transact(ctx, what, nil, func(ctx context.Context, tx TTx, f dialects.Fence) error {
		return r.fd.RecordStep(ctx, tx, r.k, f, rows, r.lease)
	})
}

// work runs w in tx, and rolls tx back when w fails or panics.
func (r *flowRun[TTx]) work(ctx context.Context, tx TTx, w func(ctx context.Context, tx TTx) error) (err error) {
	ok := false
	defer func() {
		if !ok {
			r.s.driver.Rollback(tx)
		}
	}()
	if err := w(ctx, tx); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ok = true
	return nil
}

// transient reports whether err, from a statement of a flow's start
// (each its own transaction), passes on another try: a serialization
// failure, a deadlock, a busy SQLite, a lost connection. It pauses first.
func (s *TxStore[TTx]) transient(ctx context.Context, err error, restarts int) bool {
	if ctx.Err() != nil {
		return false
	}
	switch s.driver.Classify(err) {
	case dialects.Retry, dialects.Busy, dialects.Lost:
		return sleep(ctx, backoff(min(restarts+1, 7))) == nil
	}
	return false
}

// flowError says what failed while a flow started.
func (s *TxStore[TTx]) flowError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("idempotency: %s: %w", what, err)
}

// flowEvent reports e to the Flow hook, if there is one.
func (s *TxStore[TTx]) flowEvent(ctx context.Context, e FlowEvent) {
	if h := s.cfg.hooks.Flow; h != nil {
		h(ctx, e)
	}
}

// openTx is a transaction that BeginFlow left open, with the fence of the
// new row it holds.
type openTx[TTx any] struct {
	tx    TTx
	fence dialects.Fence
	undo  func(ctx context.Context, tx TTx) error // FlowBeginner.UndoStep
}
