package natsinbox_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/exactlyonce/idempotency/internal/testbroker"
	"github.com/exactlyonce/idempotency/natsinbox"
)

// BenchmarkConsume compares, in one run on the pgx store, consuming
// messages through the inbox with a bare consumer that writes the same row
// in a transaction of its own and acks. Each round publishes 500 messages
// for each way, then drains them, bare and inbox in turn, each through a
// consumer of its own (so no message is left to the other) with the given
// number of concurrent Consume loops. It reports both rates and their
// ratio (issue 24 aims at inbox/bare ≥ 0.8):
//
//	go test -run '^$' -bench Consume -benchtime 6x ./natsinbox
func BenchmarkConsume(b *testing.B) {
	for _, loops := range []int{1, 8} {
		b.Run(fmt.Sprint("consumers=", loops), func(b *testing.B) { benchConsume(b, loops) })
	}
}

func benchConsume(b *testing.B, loops int) {
	f := setup(b, 30*time.Second)
	c, err := natsinbox.New(newInbox(b, f.store), "bench", credit)
	if err != nil {
		b.Fatal(err)
	}
	bare := func(ctx context.Context, msg jetstream.Msg) {
		tx, err := f.pool.Begin(ctx)
		if err == nil {
			if err = credit(ctx, tx, msg); err == nil {
				err = tx.Commit(ctx)
			}
			_ = tx.Rollback(ctx)
		}
		if err != nil {
			_ = msg.Nak()
			return
		}
		_ = msg.Ack()
	}
	withInbox := func(ctx context.Context, msg jetstream.Msg) { _, _ = c.Handle(ctx, msg) }

	const n = 500
	ctx := context.Background()
	var phase atomic.Int64
	var seq int
	// drain publishes n messages on a subject of their own, then times a
	// new consumer of that subject until all n are handled.
	drain := func(handle func(context.Context, jetstream.Msg)) time.Duration {
		subject := fmt.Sprintf("%s.phase%d", f.stream, phase.Add(1))
		for range n {
			seq++
			msg := nats.NewMsg(subject)
			msg.Data = fmt.Appendf(nil, "m-%d", seq)
			msg.Header.Set(nats.MsgIdHdr, string(msg.Data))
			if _, err := f.js.PublishMsg(ctx, msg); err != nil {
				b.Fatal(err)
			}
		}
		cons, err := f.js.CreateConsumer(ctx, f.stream, jetstream.ConsumerConfig{
			AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: subject, MaxAckPending: 1000,
		})
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{}, n)
		start := time.Now()
		var ccs []jetstream.ConsumeContext
		for range loops {
			cc, err := cons.Consume(func(msg jetstream.Msg) { handle(ctx, msg); done <- struct{}{} })
			if err != nil {
				b.Fatal(err)
			}
			ccs = append(ccs, cc)
		}
		for range n {
			<-done
		}
		elapsed := time.Since(start)
		for _, cc := range ccs {
			cc.Stop()
		}
		return elapsed
	}
	testbroker.Compare(b, fmt.Sprintf("NATS JetStream, pgx store, %d consumers", loops), n,
		func() time.Duration { return drain(bare) },
		func() time.Duration { return drain(withInbox) })
}
