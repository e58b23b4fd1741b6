package natsinbox_test

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
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/internal/testbroker"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/natsinbox"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// fixture is a stream and a pull consumer of its own on the NATS server,
// and a pgx store on a fresh Postgres database with a credits table.
type fixture struct {
	js       jetstream.JetStream
	stream   string
	consumer jetstream.Consumer
	pool     *pgxpool.Pool
	dsn      string
	store    *idempotency.TxStore[pgx.Tx]
}

var streams atomic.Int64

func setup(t testing.TB, ackWait time.Duration) *fixture {
	t.Helper()
	ctx := context.Background()
	nc, err := nats.Connect(testbroker.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("INBOX_%s_%d_%d", strings.NewReplacer("/", "_", " ", "_", "-", "_").Replace(t.Name()), time.Now().UnixNano(), streams.Add(1))
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), name) })
	cons, err := js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{
		Durable: "inbox", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxDeliver: 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	dsn := testdb.Backend{Name: "pgx", Driver: "pgx", Kind: "postgres"}.DSN(t)
	pool, err := pgxpool.New(ctx, dsn)
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
	store, err := pgxstore.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{js: js, stream: name, consumer: cons, pool: pool, dsn: dsn, store: store}
}

func (f *fixture) publish(t testing.TB, header, id, body string) {
	t.Helper()
	msg := nats.NewMsg(f.stream + ".credit")
	msg.Data = []byte(body)
	if header != "" {
		msg.Header.Set(header, id)
	}
	if _, err := f.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// credit writes one row for the message, through tx.
func credit(ctx context.Context, tx pgx.Tx, msg jetstream.Msg) error {
	_, err := tx.Exec(ctx, `INSERT INTO credits (ref, amount) VALUES ($1, 1)`, string(msg.Data()))
	return err
}

// consume runs c on the consumer until the test ends.
func (f *fixture) consume(t *testing.T, c *natsinbox.Consumer[pgx.Tx]) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cc, err := f.consumer.Consume(c.MessageHandler(ctx))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Stop(); cancel() })
}

// settled waits until the consumer has nothing pending or unacknowledged.
func (f *fixture) settled(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		info, err := f.consumer.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer not settled after %v: %d pending, %d unacknowledged", within, info.NumPending, info.NumAckPending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) rows(t *testing.T) map[string]int {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT ref, COUNT(*) FROM credits GROUP BY ref`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for rows.Next() {
		var ref string
		var n int
		if err := rows.Scan(&ref, &n); err != nil {
			t.Fatal(err)
		}
		got[ref] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

func newInbox(t testing.TB, s *idempotency.TxStore[pgx.Tx], opts ...inbox.Option) *inbox.Inbox[pgx.Tx] {
	t.Helper()
	opts = append([]inbox.Option{inbox.WithBackoff(func(int) time.Duration { return 50 * time.Millisecond })}, opts...)
	in, err := inbox.New(s, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// TestDuplicatesApplyOnce publishes 20 messages and 5 copies of some of
// them, keyed by an application header that JetStream does not dedupe:
// every message is applied once and every delivery acked.
func TestDuplicatesApplyOnce(t *testing.T) {
	t.Parallel()
	f := setup(t, 5*time.Second)
	c, err := natsinbox.New(newInbox(t, f.store), "credits", credit,
		natsinbox.WithMessageID(func(m jetstream.Msg) (string, error) { return m.Headers().Get("Order-Id"), nil }))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		f.publish(t, "Order-Id", fmt.Sprint("o-", i), fmt.Sprint("o-", i))
	}
	for i := range 5 {
		f.publish(t, "Order-Id", fmt.Sprint("o-", i*3), fmt.Sprint("o-", i*3))
	}
	f.consume(t, c)
	f.settled(t, 20*time.Second)
	got := f.rows(t)
	if len(got) != 20 {
		t.Fatalf("%d messages applied, want 20: %v", len(got), got)
	}
	for ref, n := range got {
		if n != 1 {
			t.Errorf("%s applied %d times, want once", ref, n)
		}
	}
}

// TestNatsMsgIDAndRetry: the default id is Nats-Msg-Id; a handler that
// fails is naked with the inbox's delay, and its redelivery (attempt 2)
// applies the message once.
func TestNatsMsgIDAndRetry(t *testing.T) {
	t.Parallel()
	f := setup(t, 5*time.Second)
	var mu sync.Mutex
	var attempts []uint64
	c, err := natsinbox.New(newInbox(t, f.store), "credits", func(ctx context.Context, tx pgx.Tx, msg jetstream.Msg) error {
		meta, err := msg.Metadata()
		if err != nil {
			return err
		}
		mu.Lock()
		attempts = append(attempts, meta.NumDelivered)
		mu.Unlock()
		if err := credit(ctx, tx, msg); err != nil {
			return err
		}
		if meta.NumDelivered == 1 {
			return errors.New("the first delivery fails")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f.publish(t, nats.MsgIdHdr, "evt-1", "evt-1")
	f.consume(t, c)
	f.settled(t, 20*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(attempts, []uint64{1, 2}) {
		t.Fatalf("deliveries %v, want [1 2]", attempts)
	}
	if got := f.rows(t); got["evt-1"] != 1 || len(got) != 1 {
		t.Fatalf("rows %v, want evt-1 once", got)
	}
}

// TestTerm: a final failure, a poison message and a message without an id
// are terminated: JetStream stops redelivering them although MaxDeliver
// (20) and AckWait (300ms) would bring them back.
func TestTerm(t *testing.T) {
	t.Parallel()
	f := setup(t, 300*time.Millisecond)
	var final, poison, noID atomic.Int32
	c, err := natsinbox.New(newInbox(t, f.store, inbox.WithMaxAttempts(3)), "credits", func(ctx context.Context, tx pgx.Tx, msg jetstream.Msg) error {
		switch string(msg.Data()) {
		case "final":
			final.Add(1)
			return idempotency.FinalCode("unknown_account", errors.New("no such account"))
		case "poison":
			poison.Add(1)
			return errors.New("cannot parse")
		default:
			noID.Add(1)
			return nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	f.publish(t, nats.MsgIdHdr, "final", "final")
	f.publish(t, nats.MsgIdHdr, "poison", "poison")
	f.publish(t, "", "", "no-id")
	f.consume(t, c)
	f.settled(t, 20*time.Second)
	time.Sleep(time.Second) // three AckWaits: a message not terminated would be back
	if final.Load() != 1 || poison.Load() != 3 || noID.Load() != 0 {
		t.Fatalf("runs: final %d (want 1), poison %d (want 3), no id %d (want 0)", final.Load(), poison.Load(), noID.Load())
	}
}

// TestInProgress: a handler that runs for four AckWaits is kept with
// InProgress and not redelivered meanwhile.
func TestInProgress(t *testing.T) {
	t.Parallel()
	f := setup(t, 500*time.Millisecond)
	var runs atomic.Int32
	c, err := natsinbox.New(newInbox(t, f.store), "credits", func(ctx context.Context, tx pgx.Tx, msg jetstream.Msg) error {
		runs.Add(1)
		time.Sleep(2 * time.Second)
		return credit(ctx, tx, msg)
	}, natsinbox.WithProgress(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	f.publish(t, nats.MsgIdHdr, "slow", "slow")
	f.consume(t, c)
	f.settled(t, 20*time.Second)
	if runs.Load() != 1 {
		t.Fatalf("the handler ran %d times, want 1: the message was redelivered while it ran", runs.Load())
	}
	if got := f.rows(t); got["slow"] != 1 {
		t.Fatalf("rows %v", got)
	}
}

func TestNewOptions(t *testing.T) {
	t.Parallel()
	in := &inbox.Inbox[pgx.Tx]{}
	for name, opt := range map[string]natsinbox.Option{
		"WithMessageID": natsinbox.WithMessageID(nil),
		"WithProgress":  natsinbox.WithProgress(0),
	} {
		if _, err := natsinbox.New(in, "s", credit, opt); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err %v, want one naming it", name, err)
		}
	}
	if _, err := natsinbox.New(in, "", credit); err == nil {
		t.Error("an empty source: no error")
	}
}
