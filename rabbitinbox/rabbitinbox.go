// Package rabbitinbox consumes RabbitMQ deliveries through an inbox
// (package inbox): each delivery's handler runs in the transaction of its
// (source, message id) key, and the delivery is acknowledged only after
// that transaction committed, or when a redelivery finds it committed.
//
// Consume with manual acks (autoAck false) and hand the deliveries to Run:
//
//	deliveries, err := ch.Consume("payments", "", false, false, false, false, nil)
//	c, err := rabbitinbox.New(in, "payments", func(ctx context.Context, tx pgx.Tx, d amqp.Delivery) error {
//		return credit(ctx, tx, d.Body) // writes through tx only
//	})
//	err = c.Run(ctx, deliveries)
//
// What a verdict does: Ack after COMMIT or for a replay; Nack with requeue
// when the handler failed and may succeed later (after the inbox's
// backoff, capped by WithMaxRequeueDelay: RabbitMQ has no delayed
// requeue, so the consumer holds the delivery that long); Nack without
// requeue for a final failure, a reused id, a missing id or a poison
// message, which RabbitMQ routes to the queue's dead-letter exchange
// (x-dead-letter-exchange), or drops when the queue has none.
//
// Poison messages are bounded by the broker's count: quorum queues
// (x-queue-type: quorum) put it in the x-delivery-count header. Classic
// queues keep no count, so there the inbox cannot bound them; give them a
// quorum queue, or a delivery-limit policy.
package rabbitinbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/exactlyonce/idempotency/inbox"
)

// Handler applies one delivery; its writes go through tx.
type Handler[TTx any] func(ctx context.Context, tx TTx, d amqp.Delivery) error

// Consumer runs a Handler for RabbitMQ deliveries through an inbox.
type Consumer[TTx any] struct {
	in     *inbox.Inbox[TTx]
	source string
	fn     Handler[TTx]
	config
}

type config struct {
	id       func(amqp.Delivery) (string, error)
	maxDelay time.Duration
}

// Option configures a Consumer.
type Option func(*config) error

// WithMessageID sets how a delivery's id is found. The default is the
// message-id property (amqp.Publishing.MessageId), which the producer
// sets. A delivery without one, or whose function returns an error, is
// dead-lettered (inbox.ErrNoID).
func WithMessageID(f func(amqp.Delivery) (string, error)) Option {
	return func(c *config) error {
		if f == nil {
			return errors.New("rabbitinbox: WithMessageID(nil): want a function of the delivery")
		}
		c.id = f
		return nil
	}
}

// WithMaxRequeueDelay caps how long a failed delivery is held before it is
// requeued; 0 requeues at once. The default is one second. The held
// delivery counts against the channel's prefetch meanwhile.
func WithMaxRequeueDelay(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("rabbitinbox: WithMaxRequeueDelay(%v): the delay must not be negative", d)
		}
		c.maxDelay = d
		return nil
	}
}

// MessageID is the default id of a delivery: its message-id property.
func MessageID(d amqp.Delivery) (string, error) { return d.MessageId, nil }

// New returns a consumer that runs fn for deliveries of source (a name for
// the queue or the producer; message ids are unique within it).
func New[TTx any](in *inbox.Inbox[TTx], source string, fn Handler[TTx], opts ...Option) (*Consumer[TTx], error) {
	switch {
	case in == nil:
		return nil, errors.New("rabbitinbox: New with a nil inbox: create one with inbox.New")
	case fn == nil:
		return nil, errors.New("rabbitinbox: New with a nil handler")
	}
	if err := inbox.ValidateSource(source); err != nil {
		return nil, fmt.Errorf("rabbitinbox: %w", err)
	}
	c := config{id: MessageID, maxDelay: time.Second}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return nil, err
		}
	}
	return &Consumer[TTx]{in: in, source: source, fn: fn, config: c}, nil
}

// Run handles deliveries one at a time until ctx ends or the channel
// closes (the connection or channel went away: consume again on a new
// one; unacknowledged deliveries come back, and their redeliveries
// replay). It returns ctx's error, or nil when the channel closed.
func (c *Consumer[TTx]) Run(ctx context.Context, deliveries <-chan amqp.Delivery) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case d, ok := <-deliveries:
			if !ok {
				return nil
			}
			_, _ = c.Handle(ctx, d) // a lost ack brings the delivery back: a replay
		}
	}
}

// Handle runs the handler for d and then acks or nacks it as the verdict
// says. The error is the ack's own (a closed channel): the transaction's
// outcome stands, and a redelivery replays it.
func (c *Consumer[TTx]) Handle(ctx context.Context, d amqp.Delivery) (inbox.Verdict, error) {
	id, err := c.id(d)
	if err != nil {
		v := inbox.Verdict{Action: inbox.DeadLetter, Err: fmt.Errorf("%w: %w", inbox.ErrNoID, err)}
		return v, d.Nack(false, false)
	}
	v := c.in.Handle(ctx, inbox.Delivery{Source: c.source, ID: id, Attempt: Attempt(d)},
		func(ctx context.Context, tx TTx) error { return c.fn(ctx, tx, d) })
	switch v.Action {
	case inbox.Ack:
		err = d.Ack(false)
	case inbox.DeadLetter:
		err = d.Nack(false, false)
	default:
		if delay := min(v.Delay, c.maxDelay); delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		err = d.Nack(false, true)
	}
	if err != nil {
		err = fmt.Errorf("rabbitinbox: %s of message %q: %w", v.Action, id, err)
	}
	return v, err
}

// Attempt is which delivery d is, from a quorum queue's x-delivery-count
// header (the deliveries before this one): 1 for the first. A classic
// queue keeps no count: 1 for a first delivery, 0 (unknown) for a
// redelivery.
func Attempt(d amqp.Delivery) int {
	switch n := d.Headers["x-delivery-count"].(type) {
	case int64:
		return int(n) + 1
	case int32:
		return int(n) + 1
	case int:
		return n + 1
	}
	if d.Redelivered {
		return 0
	}
	return 1
}
