// Package inbox applies redelivered messages and provider webhooks exactly
// once: it runs the handler of one delivery in the transaction of an
// idempotency key named by (source, message id), and says what to do with
// the delivery afterwards.
//
// Brokers (NATS JetStream, RabbitMQ) and webhook providers deliver at least
// once: a consumer that crashed before its ack, or an answer that was lost,
// brings the same message again. The order of three things decides whether
// its effect happens once:
//
//   - ack before COMMIT loses the message when the process dies in between;
//   - COMMIT, then ack, applies it twice when the process dies in between,
//     unless the record that it was applied commits with the effect.
//
// Handle does the second, with the record in the same transaction: the
// handler's writes and the key commit together, and a redelivery finds the
// key and is acknowledged without running the handler again.
//
// The package knows no broker. natsinbox, rabbitinbox and stripeinbox
// (each a module of its own) turn a Verdict into the broker's ack, nak and
// term, or into an HTTP status.
//
// # How long to keep keys
//
// A key must outlive every redelivery of its message, or a late one runs
// the handler again. Set the store's TTL (idempotency.WithTTL) above the
// longest time a message can come back: for JetStream, the consumer's
// MaxDeliver times its largest backoff plus AckWait, and the stream's
// duplicate window for producer retries; for RabbitMQ, the longest a
// message can wait in the queue (its message TTL); for Stripe, three days of
// retries. The default of 24 hours is too short for Stripe; a week is a
// safe margin for all three.
package inbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/exactlyonce/idempotency"
)

// Action is what to do with a delivery once Handle returns.
type Action int

const (
	// Ack: the handler's effect is committed, now or by an earlier
	// delivery. Acknowledge the message (JetStream Ack, AMQP Ack, HTTP 2xx).
	Ack Action = iota + 1
	// Retry: nothing was committed and a later delivery may succeed.
	// Redeliver after Verdict.Delay (JetStream NakWithDelay, AMQP Nack
	// with requeue, HTTP 5xx).
	Retry
	// DeadLetter: no delivery of this message will succeed. Stop
	// redelivering it (JetStream Term, AMQP Nack without requeue, which
	// routes it to the queue's dead-letter exchange).
	DeadLetter
)

func (a Action) String() string {
	switch a {
	case Ack:
		return "ack"
	case Retry:
		return "retry"
	case DeadLetter:
		return "dead-letter"
	}
	return fmt.Sprintf("inbox.Action(%d)", int(a))
}

// Delivery is one delivery of a message, as the broker hands it over.
type Delivery struct {
	// Source names where the message comes from: a stream, a queue, a
	// provider ("payments", "stripe"). Ids are unique within a source.
	Source string
	// ID is the message's id: every delivery of the message, and every
	// copy a producer publishes again, carries the same one. An id that is
	// not a valid idempotency key (over 255 bytes, not printable ASCII) is
	// keyed by its SHA-256.
	ID string
	// Attempt is which delivery this is, 1 for the first, from the
	// broker's count; 0 when the broker keeps none.
	Attempt int
	// Params, when not nil, is fingerprinted with the key: a message that
	// reuses an id with other params is dead-lettered
	// (idempotency.ErrParamsMismatch) instead of acknowledged as done. Nil
	// means the id alone names the message, which suits providers whose
	// redeliveries differ in details (Stripe's pending_webhooks).
	Params any
}

// Verdict is what Handle decided.
type Verdict struct {
	Action Action
	// Delay is how long to wait before the message is delivered again
	// (Retry only).
	Delay time.Duration
	// Replayed reports that this delivery did not run the handler: the
	// message was applied (Ack) or failed finally (DeadLetter) before.
	Replayed bool
	// Err says why the delivery is retried or dead-lettered.
	Err error
}

// Inbox runs deliveries' handlers on a store of transaction type TTx: the
// sqlx store (idempotency.New) or the pgx store (pgxstore.New). It is safe
// for concurrent use.
type Inbox[TTx any] struct {
	store *idempotency.TxStore[TTx]
	config
}

type config struct {
	maxAttempts int
	backoff     func(attempt int) time.Duration
	logger      *slog.Logger
}

// Option configures an Inbox.
type Option func(*config) error

// WithMaxAttempts bounds poison messages: a delivery whose handler fails
// with an ordinary error on attempt n or later (by the broker's count) is
// dead-lettered instead of retried. The default is 10; 0 means never (the
// broker's own limit, such as JetStream's MaxDeliver, still applies). Keep
// it at or below the broker's limit, so that the inbox, which logs why,
// decides rather than the broker silently dropping the message.
func WithMaxAttempts(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("inbox: WithMaxAttempts(%d): the limit must not be negative", n)
		}
		c.maxAttempts = n
		return nil
	}
}

// WithBackoff sets the delay before a failed delivery comes again, as a
// function of its attempt (1 for the first). The default doubles from one
// second to five minutes, with jitter.
func WithBackoff(f func(attempt int) time.Duration) Option {
	return func(c *config) error {
		if f == nil {
			return errors.New("inbox: WithBackoff(nil): want a function of the attempt")
		}
		c.backoff = f
		return nil
	}
}

// WithLogger logs retried and dead-lettered deliveries; silent by default.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("inbox: WithLogger(nil): want a logger")
		}
		c.logger = l
		return nil
	}
}

// DefaultBackoff is the default delay before attempt+1: one second,
// doubling, at most five minutes, jittered by up to a fifth.
func DefaultBackoff(attempt int) time.Duration {
	d := time.Second << min(max(attempt-1, 0), 9)
	d = min(d, 5*time.Minute)
	return d - rand.N(d/5+1)
}

// New returns an inbox on store.
func New[TTx any](store *idempotency.TxStore[TTx], opts ...Option) (*Inbox[TTx], error) {
	if store == nil {
		return nil, errors.New("inbox: New(nil): want a store from idempotency.New or pgxstore.New")
	}
	c := config{maxAttempts: 10, backoff: DefaultBackoff, logger: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return nil, err
		}
	}
	return &Inbox[TTx]{store: store, config: c}, nil
}

// ErrNoID reports a delivery without a message id: it cannot be told from
// its redeliveries, so it is dead-lettered rather than applied blindly.
var ErrNoID = errors.New("inbox: the delivery has no message id; set one at the producer (Nats-Msg-Id, AMQP message-id) or configure a function that derives it")

// ErrPoison wraps the handler's error when a delivery failed on its last
// allowed attempt (WithMaxAttempts).
var ErrPoison = errors.New("inbox: the message failed on every allowed attempt")

// ValidateSource reports whether source can name a source: 1 to 200 bytes
// of printable ASCII.
func ValidateSource(source string) error {
	if source == "" || len(source) > 200 {
		return fmt.Errorf("inbox: source %q: want 1 to 200 bytes", source)
	}
	for i := 0; i < len(source); i++ {
		if c := source[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("inbox: source %q: byte %d is not printable ASCII", source, i)
		}
	}
	return nil
}

// Handle runs fn for d in the transaction of d's key, unless the key
// committed before, and says what to do with the delivery. The store's
// scope becomes "inbox/" + d.Source and the key d.ID.
//
// fn's writes go through tx and commit with the key; fn must not call
// other systems (see the idempotency package). Its error decides the
// action: nil acks; idempotency.Final (or FinalCode) stores the failure and
// dead-letters, and redeliveries are dead-lettered without running fn; any
// other error rolls back and retries after the backoff, until the last
// attempt (WithMaxAttempts), which dead-letters (ErrPoison). Conflicts the
// store cannot settle in time (a twin still running, a COMMIT whose
// outcome was lost, a canceled ctx) retry: the redelivery finds out.
func (in *Inbox[TTx]) Handle(ctx context.Context, d Delivery, fn func(ctx context.Context, tx TTx) error) Verdict {
	if fn == nil {
		return in.verdict(d, Verdict{Action: Retry, Err: errors.New("inbox: Handle with a nil fn: pass the handler")})
	}
	if err := ValidateSource(d.Source); err != nil {
		// The consumer's configuration, not the message, is wrong: keep
		// the message for a fixed consumer.
		return in.verdict(d, Verdict{Action: Retry, Delay: in.backoff(d.Attempt), Err: err})
	}
	if d.ID == "" {
		return in.verdict(d, Verdict{Action: DeadLetter, Err: ErrNoID})
	}
	res, err := idempotency.Run(ctx, in.store.Scope("inbox/"+d.Source), Key(d.ID), d.Params,
		func(ctx context.Context, tx TTx) (struct{}, error) { return struct{}{}, fn(ctx, tx) })
	var final *idempotency.FinalError
	switch {
	case err == nil:
		return Verdict{Action: Ack, Replayed: res.Replayed}
	case errors.As(err, &final):
		return in.verdict(d, Verdict{Action: DeadLetter, Replayed: res.Replayed, Err: err})
	case errors.Is(err, idempotency.ErrParamsMismatch), errors.Is(err, idempotency.ErrBadParams),
		errors.Is(err, idempotency.ErrInvalidKey):
		return in.verdict(d, Verdict{Action: DeadLetter, Err: err})
	case errors.Is(err, idempotency.ErrTransactionEnded):
		// fn's writes may have committed without the key: running it
		// again could apply them twice.
		return in.verdict(d, Verdict{Action: DeadLetter, Err: err})
	case ctx.Err() != nil:
		return in.verdict(d, Verdict{Action: Retry, Err: err}) // shutting down: at once
	case errors.Is(err, idempotency.ErrInProgress), errors.Is(err, idempotency.ErrOutcomeUnknown):
		// Not the message's fault, and the next delivery settles it:
		// never counted as poison.
		return in.verdict(d, Verdict{Action: Retry, Delay: in.backoff(1), Err: err})
	case in.maxAttempts > 0 && d.Attempt >= in.maxAttempts:
		return in.verdict(d, Verdict{Action: DeadLetter, Err: fmt.Errorf("%w (attempt %d of %d): %w", ErrPoison, d.Attempt, in.maxAttempts, err)})
	}
	return in.verdict(d, Verdict{Action: Retry, Delay: in.backoff(d.Attempt), Err: err})
}

func (in *Inbox[TTx]) verdict(d Delivery, v Verdict) Verdict {
	level := slog.LevelWarn
	if v.Action == DeadLetter {
		level = slog.LevelError
	}
	in.logger.Log(context.Background(), level, "inbox: delivery not applied",
		"source", d.Source, "id", d.ID, "attempt", d.Attempt, "action", v.Action.String(),
		"delay", v.Delay, "replayed", v.Replayed, "err", v.Err)
	return v
}

// Key is the idempotency key of message id: id itself when it is a valid
// key, else "sha256:" and its hex digest.
func Key(id string) string {
	if idempotency.ValidateKey(id) == nil {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func isFinal(err error) bool {
	var final *idempotency.FinalError
	return errors.As(err, &final)
}
