package idempotency

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/exactlyonce/idempotency/dialects"
)

// Resumable is a flow that RunCompleter can resume: every *Flow[P, T,
// TTx] is one, whatever its P and T, so that one completer serves all the
// flows of a store. Its TTx is the store's, so a flow written for another
// kind of store does not compile in its completer.
type Resumable[TTx any] interface {
	// Name returns the flow's name.
	Name() string

	resume(ctx context.Context, s *TxStore[TTx], fd dialects.FlowDriver[TTx], k dialects.Key, row dialects.FlowRow) error
}

var _ Resumable[any] = (*Flow[int, int, any])(nil)

const (
	// maxResumes is how many times a flow is taken over (by retries and
	// completers together) before a completer gives up on it.
	maxResumes = 5
	// completerBatch bounds the flows of one name that a completer lists
	// at a time.
	completerBatch = 100
)

// GaveUpCode is the Code of the FinalError that RunCompleter stores for a
// flow it gave up on, and that retries of its key get.
const GaveUpCode = "flow_gave_up"

// RunCompleter finishes flows whose runs stopped and whom nobody retries:
// every WithCompleterInterval (jittered), it lists the flows of the given
// names whose lease ran out, by the database's clock, takes each over with
// a new fencing token, and resumes it with its stored params and scope, as
// a retry would. It returns nil when ctx is done, and an error only for a
// bad call (no store, no flows, two flows of one name); a failed look is
// logged and the next one tries again.
//
// Run it in a goroutine on every instance, with every flow of the store:
// no leader is needed, since a takeover succeeds for one instance at most
// and skips a flow whose step is under way.
//
// A flow already taken over five times (by retries and completers
// together) is given up by the completer that finds it next: its key gets a final failure with Code GaveUpCode and the
// last run's error in its message, which retries replay, and the hooks see
// FlowGaveUp. Resumes back off: a flow taken over n times (n > 0) waits
// 2^(n-1) intervals after its lease ran out before the next, and the
// completer looks once an interval: from its first stop to the give-up a
// flow waits at most about 40 intervals, plus a lease for each of its six
// runs that hung rather than failed. The other systems a flow calls must
// honour its keys for at least that long (with the defaults, under half
// an hour); a day is a safe margin.
//
//	go func() { _ = idempotency.RunCompleter(ctx, store, checkout, refund) }()
func RunCompleter[TTx any](ctx context.Context, s *TxStore[TTx], flows ...Resumable[TTx]) error {
	fd, err := flowDriver(s)
	if err != nil {
		return err
	}
	if len(flows) == 0 {
		return errors.New("idempotency: RunCompleter with no flows: pass every flow of the store")
	}
	seen := make(map[string]bool, len(flows))
	for _, f := range flows {
		if f == nil || f.Name() == "" {
			return errors.New("idempotency: RunCompleter with a nil flow, or one without a name: pass flows made by NewFlow")
		}
		if seen[f.Name()] {
			return fmt.Errorf("idempotency: RunCompleter with two flows named %q: a completer finds a flow's code by its name, so names must be unique", f.Name())
		}
		seen[f.Name()] = true
	}
	interval := s.cfg.flow.intervalOrDefault()
	for {
		for _, f := range flows {
			s.complete(ctx, fd, f, interval)
		}
		if err := sleep(ctx, jitter(interval)); err != nil {
			return nil
		}
	}
}

// complete resumes the flows named f.Name() whose lease ran out and whose
// backoff has passed.
func (s *TxStore[TTx]) complete(ctx context.Context, fd dialects.FlowDriver[TTx], f Resumable[TTx], interval time.Duration) {
	log := s.cfg.logger
	rows, err := fd.ExpiredFlows(ctx, f.Name(), completerBatch)
	if err != nil {
		if ctx.Err() == nil {
			log.WarnContext(ctx, "idempotency: the completer could not list flows; will try again", "flow", f.Name(), "err", err)
		}
		return
	}
	lease := s.cfg.flow.leaseOrDefault()
	for _, row := range rows {
		if ctx.Err() != nil {
			return
		}
		if row.Overdue < resumeDelay(row.Resumes, interval) {
			continue
		}
		sc := s.Scope(row.Scope)
		k, err := sc.key(row.Key)
		if err != nil {
			continue // not a key this library wrote
		}
		took, err := fd.TakeOverFlow(ctx, k, row.Token, lease)
		if err != nil || !took {
			continue // another completer or a retry has it, or its step is under way
		}
		row.Token++
		row.Resumes++
		if row.Resumes > maxResumes {
			sc.giveUp(ctx, fd, k, row)
			continue
		}
		sc.flowEvent(ctx, FlowEvent{Kind: FlowResumed, Flow: row.Flow, Scope: row.Scope, Key: row.Key, Token: row.Token, Resumes: row.Resumes})
		err = f.resume(ctx, sc, fd, k, row)
		var final *FinalError
		if err != nil && !errors.As(err, &final) && ctx.Err() == nil {
			log.WarnContext(ctx, "idempotency: a resumed flow stopped again; it will be resumed later",
				"flow", row.Flow, "scope", row.Scope, "key", row.Key, "resumes", row.Resumes, "err", err)
		}
	}
}

// resumeDelay is how long after its lease ran out a flow taken over
// resumes times waits for the completer: none the first time, then one
// interval, doubling.
func resumeDelay(resumes int, interval time.Duration) time.Duration {
	if resumes == 0 {
		return 0
	}
	return interval << min(resumes-1, 10)
}

// giveUp stores the flow's final failure under its key, as its owner.
func (s *TxStore[TTx]) giveUp(ctx context.Context, fd dialects.FlowDriver[TTx], k dialects.Key, row dialects.FlowRow) {
	last := row.LastError
	if last == "" {
		last = "its owner's lease ran out"
	}
	final := &FinalError{Code: GaveUpCode, Err: fmt.Errorf("idempotency: flow %q gave up after %d resumes; its last run stopped: %s", row.Flow, row.Resumes-1, last)}
	value, err := final.encode()
	if err == nil {
		r := &flowRun[TTx]{s: s, fd: fd, k: k, flow: row.Flow, token: row.Token, lease: s.cfg.flow.leaseOrDefault()}
		rec := dialects.Record{Fingerprint: row.Fingerprint, Value: value, Failed: true}
		err = r.transact(ctx, "give up", nil, func(ctx context.Context, tx TTx, f dialects.Fence) error {
			return fd.FinishFlow(ctx, tx, k, f, rec, s.cfg.ttl)
		})
	}
	if err != nil {
		s.cfg.logger.WarnContext(ctx, "idempotency: the completer could not give up on a flow; will try again", "flow", row.Flow, "scope", row.Scope, "key", row.Key, "err", err)
		_ = fd.ReleaseFlow(context.WithoutCancel(ctx), k, row.Token, last)
		return
	}
	s.cfg.logger.WarnContext(ctx, "idempotency: gave up on a flow; its key holds a final failure", "flow", row.Flow, "scope", row.Scope, "key", row.Key, "resumes", row.Resumes-1, "last_error", last)
	s.flowEvent(ctx, FlowEvent{Kind: FlowGaveUp, Flow: row.Flow, Scope: row.Scope, Key: row.Key, Token: row.Token, Resumes: row.Resumes - 1, Err: final})
}

// resume runs the flow of row, under k, which the caller has just taken
// over (with row.Token), with its stored params.
func (f *Flow[P, T, TTx]) resume(ctx context.Context, s *TxStore[TTx], fd dialects.FlowDriver[TTx], k dialects.Key, row dialects.FlowRow) error {
	var params P
	if err := json.Unmarshal(row.Params, &params); err != nil {
		err = fmt.Errorf("idempotency: flow %q: its stored params cannot be decoded into %T: %w", f.name, params, err)
		_ = fd.ReleaseFlow(context.WithoutCancel(ctx), k, row.Token, err.Error())
		return err
	}
	// A row beside the key's record is an orphan (a twin inserted it after
	// the flow had finished, and lost its connection before it looked
	// again): the flow has its answer; drop the row, run nothing.
	if _, done, err := s.driver.Lookup(ctx, k); err != nil {
		_ = fd.ReleaseFlow(context.WithoutCancel(ctx), k, row.Token, err.Error())
		return fmt.Errorf("idempotency: flow %q: read its key: %w", f.name, err)
	} else if done {
		return fd.DropFlow(ctx, k, row.Token)
	}
	steps, err := fd.FlowSteps(ctx, k)
	if err != nil {
		_ = fd.ReleaseFlow(context.WithoutCancel(ctx), k, row.Token, err.Error())
		return fmt.Errorf("idempotency: flow %q: read its steps: %w", f.name, err)
	}
	_, err = f.body(ctx, s, fd, k, row.Fingerprint, row.Token, params, steps, nil)
	return err
}
