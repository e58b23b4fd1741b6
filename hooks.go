package idempotency

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Hooks observe what a Store does, for metrics, traces and logs, without
// tying the core to any of them (the otelidempotency package builds on
// these). Every field is optional; hooks run on the caller's goroutine and
// must be quick.
type Hooks struct {
	// CallStart runs when Do (or Run, DoTx, RunTx) starts. The context it
	// returns is the one the call, and fn, run with: return ctx itself, or
	// one that carries a span.
	CallStart func(ctx context.Context, scope, key string) context.Context

	// CallEnd runs when the call returns.
	CallEnd func(ctx context.Context, e CallEvent)

	// PruneBatch runs after each batch of a prune (Prune or RunPruner).
	PruneBatch func(ctx context.Context, e PruneBatchEvent)

	// Pruned runs when a prune (Prune, or a run of RunPruner) returns.
	Pruned func(ctx context.Context, e PruneEvent)

	// Flow runs at each event of a flow (see FlowEvent): its start, each
	// step recorded or replayed, a takeover, a completer's resume, a
	// give-up, its end.
	Flow func(ctx context.Context, e FlowEvent)
}

// Outcome says how a call ended.
type Outcome string

// The outcomes of a call, as CallEvent reports them.
const (
	Executed     Outcome = "executed"      // fn ran and its value was stored
	Replayed     Outcome = "replayed"      // a stored value (or final failure) answered
	Mismatched   Outcome = "mismatched"    // ErrParamsMismatch
	InProgress   Outcome = "in_progress"   // ErrInProgress: a twin ran past the wait bound
	FinalFailure Outcome = "final_failure" // fn's FinalError was stored
	Failed       Outcome = "failed"        // fn's error (rolled back) or any other error
	Invalid      Outcome = "invalid"       // bad input: nothing touched the database
	Panicked     Outcome = "panicked"      // fn panicked: rolled back, and the panic goes on
)

// errPanicked is the error of a Panicked CallEvent.
var errPanicked = errors.New("idempotency: fn panicked; the call was rolled back and the panic goes on")

// CallEvent describes one finished call.
type CallEvent struct {
	Scope, Key string
	Outcome    Outcome
	// Retries counts attempts rolled back and run again after a
	// serialization failure or deadlock.
	Retries  int
	Duration time.Duration
	Err      error
}

// PruneEvent describes one Prune.
type PruneEvent struct {
	Rows     int64
	Batches  int
	Duration time.Duration
	Err      error
}

// PruneBatchEvent describes one batch of a prune.
type PruneBatchEvent struct {
	Batch    int   // 1 for the first batch
	Rows     int64 // deleted by this batch
	Total    int64 // deleted by this prune so far
	Duration time.Duration
}

// WithHooks sets the store's hooks.
func WithHooks(h Hooks) Option {
	return func(c *config) error {
		c.hooks = h
		return nil
	}
}

// outcomeOf classifies a finished call for CallEnd.
func outcomeOf(replayed bool, err error) Outcome {
	var fe *FinalError
	switch {
	case err == nil && replayed:
		return Replayed
	case err == nil:
		return Executed
	case errors.As(err, &fe) && replayed:
		return Replayed
	case errors.As(err, &fe):
		return FinalFailure
	case errors.Is(err, ErrParamsMismatch):
		return Mismatched
	case errors.Is(err, ErrInProgress):
		return InProgress
	case errors.Is(err, ErrInvalidKey), errors.Is(err, ErrBadParams):
		return Invalid
	}
	return Failed
}

func badParams(err error) error { return fmt.Errorf("%w: %w", ErrBadParams, err) }
