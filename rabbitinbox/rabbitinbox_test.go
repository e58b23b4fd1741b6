package rabbitinbox_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/internal/testbroker"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/pgxstore"
	"github.com/exactlyonce/idempotency/rabbitinbox"
)

// fixture is a quorum queue of its own with a dead-letter queue, and a pgx
// store on a fresh Postgres database with a credits table.
type fixture struct {
	ch         *amqp.Channel
	queue, dlq string
	pool       *pgxpool.Pool
	store      *idempotency.TxStore[pgx.Tx]
}

var queues atomic.Int64

func setup(t testing.TB) *fixture {
	t.Helper()
	ctx := context.Background()
	conn, err := amqp.Dial(testbroker.RabbitMQ(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("inbox.%s.%d.%d", t.Name(), time.Now().UnixNano(), queues.Add(1))
	f := &fixture{ch: ch, queue: name, dlq: name + ".dead"}
	if err := ch.ExchangeDeclare(name+".dlx", "fanout", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(f.dlq, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(f.dlq, "", name+".dlx", false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{
		"x-queue-type": "quorum", "x-dead-letter-exchange": name + ".dlx",
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c, err := conn.Channel(); err == nil {
			_, _ = c.QueueDelete(name, false, false, false)
			_, _ = c.QueueDelete(f.dlq, false, false, false)
			_ = c.ExchangeDelete(name+".dlx", false, false)
		}
	})
	pool, err := pgxpool.New(ctx, testdb.Backend{Name: "pgx", Driver: "pgx", Kind: "postgres"}.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := pgxstore.Up(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE credits (ref text NOT NULL, amount integer NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if f.store, err = pgxstore.New(pool); err != nil {
		t.Fatal(err)
	}
	f.pool = pool
	return f
}

func (f *fixture) publish(t testing.TB, id, body string) {
	t.Helper()
	if err := f.ch.PublishWithContext(context.Background(), "", f.queue, false, false,
		amqp.Publishing{MessageId: id, Body: []byte(body)}); err != nil {
		t.Fatal(err)
	}
}

// consume hands the queue's deliveries to c.Handle and sends each verdict
// to the returned channel, until the test ends.
func (f *fixture) consume(t *testing.T, c *rabbitinbox.Consumer[pgx.Tx]) <-chan inbox.Verdict {
	t.Helper()
	conn, err := amqp.Dial(testbroker.RabbitMQ(t))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(f.queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	verdicts := make(chan inbox.Verdict, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range deliveries {
			v, err := c.Handle(ctx, d)
			if err != nil {
				t.Errorf("ack: %v", err)
			}
			verdicts <- v
		}
	}()
	t.Cleanup(func() { cancel(); _ = conn.Close(); <-done })
	return verdicts
}

func receive(t *testing.T, verdicts <-chan inbox.Verdict, n int) []inbox.Verdict {
	t.Helper()
	var got []inbox.Verdict
	timeout := time.After(20 * time.Second)
	for len(got) < n {
		select {
		case v := <-verdicts:
			got = append(got, v)
		case <-timeout:
			t.Fatalf("%d verdicts after 20s, want %d: %+v", len(got), n, got)
		}
	}
	select {
	case v := <-verdicts:
		t.Fatalf("a delivery more than the %d expected: %+v", n, v)
	case <-time.After(300 * time.Millisecond):
	}
	return got
}

func (f *fixture) rows(t *testing.T) map[string]int {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT ref, COUNT(*) FROM credits GROUP BY ref`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (struct {
		ref string
		n   int
	}, error) {
		var v struct {
			ref string
			n   int
		}
		err := r.Scan(&v.ref, &v.n)
		return v, err
	})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int{}
	for _, v := range got {
		m[v.ref] = v.n
	}
	return m
}

// deadLettered counts the messages in the dead-letter queue.
func (f *fixture) deadLettered(t *testing.T) int {
	t.Helper()
	q, err := f.ch.QueueDeclarePassive(f.dlq, false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

func credit(ctx context.Context, tx pgx.Tx, d amqp.Delivery) error {
	_, err := tx.Exec(ctx, `INSERT INTO credits (ref, amount) VALUES ($1, 1)`, string(d.Body))
	return err
}

func newInbox(t testing.TB, s *idempotency.TxStore[pgx.Tx], opts ...inbox.Option) *inbox.Inbox[pgx.Tx] {
	t.Helper()
	opts = append([]inbox.Option{inbox.WithBackoff(func(int) time.Duration { return 20 * time.Millisecond })}, opts...)
	in, err := inbox.New(s, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// TestDuplicatesApplyOnce: 20 messages and 5 copies with the same
// MessageId (RabbitMQ does not dedupe) are 25 deliveries, all acked, and
// 20 effects.
func TestDuplicatesApplyOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c, err := rabbitinbox.New(newInbox(t, f.store), "credits", credit)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		f.publish(t, fmt.Sprint("o-", i), fmt.Sprint("o-", i))
	}
	for i := range 5 {
		f.publish(t, fmt.Sprint("o-", i*3), fmt.Sprint("o-", i*3))
	}
	replays := 0
	for _, v := range receive(t, f.consume(t, c), 25) {
		if v.Action != inbox.Ack {
			t.Fatalf("verdict %+v, want ack", v)
		}
		if v.Replayed {
			replays++
		}
	}
	got := f.rows(t)
	if replays != 5 || len(got) != 20 {
		t.Fatalf("%d replays and %d messages applied, want 5 and 20", replays, len(got))
	}
	for ref, n := range got {
		if n != 1 {
			t.Errorf("%s applied %d times", ref, n)
		}
	}
}

// TestRequeueThenAck: a failing first delivery is requeued, and its
// redelivery (attempt 2 by x-delivery-count) applies it once.
func TestRequeueThenAck(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var mu sync.Mutex
	var attempts []int
	c, err := rabbitinbox.New(newInbox(t, f.store), "credits", func(ctx context.Context, tx pgx.Tx, d amqp.Delivery) error {
		mu.Lock()
		attempts = append(attempts, rabbitinbox.Attempt(d))
		mu.Unlock()
		if err := credit(ctx, tx, d); err != nil {
			return err
		}
		if rabbitinbox.Attempt(d) == 1 {
			return errors.New("the first delivery fails")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f.publish(t, "evt-1", "evt-1")
	got := receive(t, f.consume(t, c), 2)
	if got[0].Action != inbox.Retry || got[1].Action != inbox.Ack {
		t.Fatalf("verdicts %+v, want retry then ack", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(attempts, []int{1, 2}) {
		t.Fatalf("attempts %v, want [1 2]", attempts)
	}
	if rows := f.rows(t); rows["evt-1"] != 1 {
		t.Fatalf("rows %v", rows)
	}
}

// TestDeadLetter: a final failure, a poison message (three attempts) and
// a message without an id end in the dead-letter queue.
func TestDeadLetter(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var final, poison, noID atomic.Int32
	c, err := rabbitinbox.New(newInbox(t, f.store, inbox.WithMaxAttempts(3)), "credits", func(ctx context.Context, tx pgx.Tx, d amqp.Delivery) error {
		switch string(d.Body) {
		case "final":
			final.Add(1)
			return idempotency.Final(errors.New("no such account"))
		case "poison":
			poison.Add(1)
			return errors.New("cannot parse")
		}
		noID.Add(1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f.publish(t, "final", "final")
	f.publish(t, "poison", "poison")
	f.publish(t, "", "no-id")
	receive(t, f.consume(t, c), 5) // final, no id, and poison three times
	if final.Load() != 1 || poison.Load() != 3 || noID.Load() != 0 {
		t.Fatalf("runs: final %d (want 1), poison %d (want 3), no id %d (want 0)", final.Load(), poison.Load(), noID.Load())
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.deadLettered(t) != 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := f.deadLettered(t); n != 3 {
		t.Fatalf("%d dead-lettered, want 3", n)
	}
}

func TestNewOptions(t *testing.T) {
	t.Parallel()
	in := &inbox.Inbox[pgx.Tx]{}
	for name, opt := range map[string]rabbitinbox.Option{
		"WithMessageID":       rabbitinbox.WithMessageID(nil),
		"WithMaxRequeueDelay": rabbitinbox.WithMaxRequeueDelay(-1),
	} {
		if _, err := rabbitinbox.New(in, "s", credit, opt); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err %v, want one naming it", name, err)
		}
	}
}
