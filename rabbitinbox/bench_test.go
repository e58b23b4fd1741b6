package rabbitinbox_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/exactlyonce/idempotency/internal/testbroker"
	"github.com/exactlyonce/idempotency/rabbitinbox"
)

// BenchmarkConsume compares, in one run on the pgx store, consuming
// messages through the inbox with a bare consumer that writes the same row
// in a transaction of its own and acks. Each round publishes 500 messages
// for each way to a queue of their own, then drains them, bare and inbox
// in turn, with the given number of goroutines on one channel (prefetch
// 50). It reports both rates and their ratio (issue 24 aims at inbox/bare
// ≥ 0.8):
//
//	go test -run '^$' -bench Consume -benchtime 6x ./rabbitinbox
func BenchmarkConsume(b *testing.B) {
	for _, workers := range []int{1, 8} {
		b.Run(fmt.Sprint("consumers=", workers), func(b *testing.B) { benchConsume(b, workers) })
	}
}

func benchConsume(b *testing.B, workers int) {
	f := setup(b)
	c, err := rabbitinbox.New(newInbox(b, f.store), "bench", credit)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	bare := func(d amqp.Delivery) {
		tx, err := f.pool.Begin(ctx)
		if err == nil {
			if err = credit(ctx, tx, d); err == nil {
				err = tx.Commit(ctx)
			}
			_ = tx.Rollback(ctx)
		}
		if err != nil {
			_ = d.Nack(false, true)
			return
		}
		_ = d.Ack(false)
	}
	withInbox := func(d amqp.Delivery) { _, _ = c.Handle(ctx, d) }

	conn, err := amqp.Dial(testbroker.RabbitMQ(b))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	const n = 500
	seq, phase := 0, 0
	drain := func(handle func(amqp.Delivery)) time.Duration {
		phase++
		queue := fmt.Sprintf("%s.phase%d", f.queue, phase)
		if _, err := f.ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
			b.Fatal(err)
		}
		for range n {
			seq++
			id := fmt.Sprint("m-", seq)
			if err := f.ch.PublishWithContext(ctx, "", queue, false, false, amqp.Publishing{MessageId: id, Body: []byte(id)}); err != nil {
				b.Fatal(err)
			}
		}
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		defer ch.Close()
		if err := ch.Qos(50, 0, false); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		var left sync.WaitGroup
		left.Add(n)
		for range workers {
			go func() {
				for d := range deliveries {
					handle(d)
					left.Done()
				}
			}()
		}
		left.Wait()
		return time.Since(start)
	}
	testbroker.Compare(b, fmt.Sprintf("RabbitMQ, pgx store, %d consumers", workers), n,
		func() time.Duration { return drain(bare) },
		func() time.Duration { return drain(withInbox) })
}
