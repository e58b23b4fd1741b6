package rabbitinbox_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/internal/inboxfault"
	"github.com/exactlyonce/idempotency/internal/testbroker"
	"github.com/exactlyonce/idempotency/rabbitinbox"
)

// TestFaults publishes 300 messages and 30 copies with the same MessageId
// to a quorum queue and consumes them with two worker processes on the
// pgx store that are killed with SIGKILL inside the handler and between
// COMMIT and the ack, whose database connections are cut at COMMIT and
// whose AMQP connections are cut every tenth of a second or so, restarted until every id is
// applied and the queue is empty. Deliveries left unacknowledged by the
// last workers come back, and a clean consumer must find them all
// replays. Then every id must have exactly one row.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("kills worker processes for a minute; not in -short")
	}
	f := setup(t)
	var ids []string
	for i := range 300 {
		ids = append(ids, fmt.Sprint("order-", i))
		f.publish(t, ids[i], ids[i])
	}
	for i := range 30 {
		f.publish(t, ids[i*7], ids[i*7])
	}
	cfg := inboxfault.Config{
		DSN: dsnOf(t, f), BrokerURL: testbroker.RabbitMQ(t), Name: f.queue, Dir: t.TempDir(),
		KillBeforeCommit: 0.02, KillAfterCommit: 0.02, CutAtCommit: 0.03, CutBrokerEvery: 100 * time.Millisecond,
	}
	report := inboxfault.Supervise(t, cfg, 2, "TestFaultWorker", 3*time.Minute, func() bool {
		q, err := f.ch.QueueDeclarePassive(f.queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum", "x-dead-letter-exchange": f.queue + ".dlx"})
		return err == nil && q.Messages == 0 && len(f.rows(t)) == len(ids)
	})

	// What the killed workers left unacknowledged is back in the queue.
	in := newInbox(t, f.store)
	c, err := rabbitinbox.New(in, "orders", credit)
	if err != nil {
		t.Fatal(err)
	}
	verdicts := f.consume(t, c)
	leftover := 0
	for done := false; !done; {
		select {
		case v := <-verdicts:
			leftover++
			if v.Action != inbox.Ack || !v.Replayed {
				t.Errorf("a leftover delivery: %+v, want a replayed ack", v)
			}
		case <-time.After(time.Second):
			done = true
		}
	}
	t.Logf("RabbitMQ: %d ids (and 30 copies) published; %s; %d leftover deliveries replayed", len(ids), report, leftover)
	inboxfault.Check(t, ids, f.rows(t))
	if report.KillsBefore == 0 || report.KillsAfter == 0 || report.CommitCutsAfter+report.CommitCutsBefore == 0 {
		t.Errorf("a fault never happened, so the run proves less than it says: %s", report)
	}
}

func dsnOf(t *testing.T, f *fixture) string {
	t.Helper()
	return f.pool.Config().ConnString()
}

// killingAcker may kill the process before it acks: after COMMIT.
type killingAcker struct {
	amqp.Acknowledger
	cfg inboxfault.Config
}

func (a killingAcker) Ack(tag uint64, multiple bool) error {
	a.cfg.MaybeKill(a.cfg.KillAfterCommit, "after-commit")
	return a.Acknowledger.Ack(tag, multiple)
}

// TestFaultWorker is a worker process of TestFaults; alone, it skips.
func TestFaultWorker(t *testing.T) {
	cfg, ok := inboxfault.Worker()
	if !ok {
		t.Skip("a worker process of TestFaults")
	}
	ctx := context.Background()
	store, amqpAddr := cfg.Connect(ctx, t)
	in, err := inbox.New(store, inbox.WithMaxAttempts(0), inbox.WithBackoff(func(int) time.Duration { return 20 * time.Millisecond }))
	if err != nil {
		t.Fatal(err)
	}
	c, err := rabbitinbox.New(in, "orders", func(ctx context.Context, tx pgx.Tx, d amqp.Delivery) error {
		if err := credit(ctx, tx, d); err != nil {
			return err
		}
		cfg.MaybeKill(cfg.KillBeforeCommit, "before-commit")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cfg.BrokerURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = amqpAddr
	for { // a cut connection closes the deliveries: consume again on a new one
		conn, err := amqp.Dial(u.String())
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		ch, err := conn.Channel()
		if err == nil {
			err = ch.Qos(10, 0, false)
		}
		var deliveries <-chan amqp.Delivery
		if err == nil {
			deliveries, err = ch.Consume(cfg.Name, "", false, false, false, false, nil)
		}
		if err == nil {
			for d := range deliveries {
				d.Acknowledger = killingAcker{d.Acknowledger, cfg}
				_, _ = c.Handle(ctx, d)
			}
		}
		_ = conn.Close()
	}
}
