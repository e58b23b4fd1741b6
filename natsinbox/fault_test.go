package natsinbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/internal/inboxfault"
	"github.com/exactlyonce/idempotency/internal/testbroker"
	"github.com/exactlyonce/idempotency/natsinbox"
)

// TestFaults publishes 300 messages and 30 copies of some (keyed by an
// Order-Id header, which JetStream does not dedupe) and consumes them with
// two worker processes on the pgx store that are killed with SIGKILL
// inside the handler and between COMMIT and the ack, whose database
// connections are cut at COMMIT and whose NATS connections are cut
// every half second or so, restarted until the stream is drained. Then every id must
// have exactly one row.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("kills worker processes for a minute; not in -short")
	}
	f := setup(t, time.Second)
	var ids []string
	for i := range 300 {
		ids = append(ids, fmt.Sprint("order-", i))
		f.publish(t, "Order-Id", ids[i], ids[i])
	}
	for i := range 30 {
		f.publish(t, "Order-Id", ids[i*7], ids[i*7])
	}
	cfg := inboxfault.Config{
		DSN: f.dsn, BrokerURL: testbroker.NATS(t), Name: f.stream, Dir: t.TempDir(),
		KillBeforeCommit: 0.02, KillAfterCommit: 0.02, CutAtCommit: 0.03, CutBrokerEvery: 500 * time.Millisecond,
	}
	report := inboxfault.Supervise(t, cfg, 2, "TestFaultWorker", 3*time.Minute, func() bool {
		info, err := f.consumer.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	t.Logf("NATS: %d ids (and 30 copies) published; %s", len(ids), report)
	inboxfault.Check(t, ids, f.rows(t))
	if report.KillsBefore == 0 || report.KillsAfter == 0 || report.CommitCutsAfter+report.CommitCutsBefore == 0 {
		t.Errorf("a fault never happened, so the run proves less than it says: %s", report)
	}
}

// killingMsg is a message whose Ack may kill the process first: after
// COMMIT, before the ack.
type killingMsg struct {
	jetstream.Msg
	cfg inboxfault.Config
}

func (m killingMsg) Ack() error {
	m.cfg.MaybeKill(m.cfg.KillAfterCommit, "after-commit")
	return m.Msg.Ack()
}

// TestFaultWorker is a worker process of TestFaults; alone, it skips.
func TestFaultWorker(t *testing.T) {
	cfg, ok := inboxfault.Worker()
	if !ok {
		t.Skip("a worker process of TestFaults")
	}
	ctx := context.Background()
	store, natsAddr := cfg.Connect(ctx, t)
	in, err := inbox.New(store, inbox.WithMaxAttempts(0), inbox.WithBackoff(func(int) time.Duration { return 50 * time.Millisecond }))
	if err != nil {
		t.Fatal(err)
	}
	c, err := natsinbox.New(in, "orders", func(ctx context.Context, tx pgx.Tx, msg jetstream.Msg) error {
		if err := credit(ctx, tx, msg); err != nil {
			return err
		}
		cfg.MaybeKill(cfg.KillBeforeCommit, "before-commit")
		return nil
	}, natsinbox.WithMessageID(func(m jetstream.Msg) (string, error) { return m.Headers().Get("Order-Id"), nil }))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect("nats://"+natsAddr, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx, cfg.Name, "inbox")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cons.Consume(func(msg jetstream.Msg) { _, _ = c.Handle(ctx, killingMsg{msg, cfg}) }); err != nil {
		t.Fatal(err)
	}
	select {} // until the supervisor kills this process
}
