// Package natsinbox consumes NATS JetStream messages through an inbox
// (package inbox): each message's handler runs in the transaction of its
// (source, message id) key, and the message is acknowledged only after
// that transaction committed, or when a redelivery finds it committed.
//
// Use it on a consumer with explicit acks (jetstream.AckExplicitPolicy, the
// default of pull consumers):
//
//	c, err := natsinbox.New(in, "payments", func(ctx context.Context, tx pgx.Tx, msg jetstream.Msg) error {
//		return credit(ctx, tx, msg.Data()) // writes through tx only
//	})
//	cc, err := consumer.Consume(c.MessageHandler(ctx))
//
// What a message's verdict does: Ack after COMMIT or for a replay;
// NakWithDelay (the inbox's backoff) when the handler failed and may
// succeed later; Term for a final failure, a reused id, a missing id, or a
// poison message that failed on its last attempt (inbox.WithMaxAttempts,
// counted by JetStream's NumDelivered). While a handler runs, the message
// is kept with InProgress, so a slow handler is not redelivered to a twin
// (which would wait for the key, then replay).
package natsinbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/exactlyonce/idempotency/inbox"
)

// Handler applies one message; its writes go through tx.
type Handler[TTx any] func(ctx context.Context, tx TTx, msg jetstream.Msg) error

// Consumer runs a Handler for JetStream messages through an inbox.
type Consumer[TTx any] struct {
	in     *inbox.Inbox[TTx]
	source string
	fn     Handler[TTx]
	config
}

type config struct {
	id       func(jetstream.Msg) (string, error)
	progress time.Duration
}

// Option configures a Consumer.
type Option func(*config) error

// WithMessageID sets how a message's id is found. The default is the
// Nats-Msg-Id header, which producers set to let JetStream drop duplicates
// within the stream's window; the inbox drops them at any distance. A
// message without an id, or whose function returns an error, is
// terminated (inbox.ErrNoID).
func WithMessageID(f func(jetstream.Msg) (string, error)) Option {
	return func(c *config) error {
		if f == nil {
			return errors.New("natsinbox: WithMessageID(nil): want a function of the message")
		}
		c.id = f
		return nil
	}
}

// WithProgress sets how often a message whose handler still runs is
// reported InProgress, which restarts JetStream's AckWait. Keep it well
// under the consumer's AckWait; the default, 10s, suits the default
// AckWait of 30s.
func WithProgress(every time.Duration) Option {
	return func(c *config) error {
		if every <= 0 {
			return fmt.Errorf("natsinbox: WithProgress(%v): want a positive interval", every)
		}
		c.progress = every
		return nil
	}
}

// HeaderID is the default id of a message: its Nats-Msg-Id header.
func HeaderID(msg jetstream.Msg) (string, error) {
	return msg.Headers().Get(nats.MsgIdHdr), nil
}

// New returns a consumer that runs fn for messages of source (a name for
// the stream or subject; message ids are unique within it).
func New[TTx any](in *inbox.Inbox[TTx], source string, fn Handler[TTx], opts ...Option) (*Consumer[TTx], error) {
	switch {
	case in == nil:
		return nil, errors.New("natsinbox: New with a nil inbox: create one with inbox.New")
	case fn == nil:
		return nil, errors.New("natsinbox: New with a nil handler")
	}
	if err := inbox.ValidateSource(source); err != nil {
		return nil, fmt.Errorf("natsinbox: %w", err)
	}
	c := config{id: HeaderID, progress: 10 * time.Second}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return nil, err
		}
	}
	return &Consumer[TTx]{in: in, source: source, fn: fn, config: c}, nil
}

// MessageHandler returns a jetstream.MessageHandler for Consume that
// handles each message under ctx; errors of the acks themselves are
// dropped (the message comes again, and its redelivery is a replay).
func (c *Consumer[TTx]) MessageHandler(ctx context.Context) jetstream.MessageHandler {
	return func(msg jetstream.Msg) { _, _ = c.Handle(ctx, msg) }
}

// Handle runs the handler for msg and then acks, naks or terminates it as
// the verdict says. The error is the ack's own (a lost connection): the
// transaction's outcome stands, and a redelivery replays it.
func (c *Consumer[TTx]) Handle(ctx context.Context, msg jetstream.Msg) (inbox.Verdict, error) {
	d := inbox.Delivery{Source: c.source}
	if meta, err := msg.Metadata(); err == nil {
		d.Attempt = int(meta.NumDelivered)
	}
	id, err := c.id(msg)
	if err != nil {
		v := inbox.Verdict{Action: inbox.DeadLetter, Err: fmt.Errorf("%w: %w", inbox.ErrNoID, err)}
		return v, msg.Term()
	}
	d.ID = id

	stop := c.keepAlive(msg)
	v := c.in.Handle(ctx, d, func(ctx context.Context, tx TTx) error { return c.fn(ctx, tx, msg) })
	stop()

	switch v.Action {
	case inbox.Ack:
		err = msg.Ack()
	case inbox.DeadLetter:
		err = msg.Term()
	default:
		if v.Delay > 0 {
			err = msg.NakWithDelay(v.Delay)
		} else {
			err = msg.Nak()
		}
	}
	if err != nil {
		err = fmt.Errorf("natsinbox: %s of message %q: %w", v.Action, id, err)
	}
	return v, err
}

// keepAlive reports msg InProgress every c.progress until stop returns.
func (c *Consumer[TTx]) keepAlive(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(c.progress)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress() // a lost one only risks a redelivery, which replays
			}
		}
	}()
	return func() { close(done); <-finished }
}
