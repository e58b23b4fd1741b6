// Command inbox credits accounts exactly once from three at-least-once
// sources: a NATS JetStream stream, a RabbitMQ queue, and Stripe webhooks.
//
// Every delivery runs its handler in the transaction of its key (source,
// message id), and is acknowledged only after that transaction committed.
// The producers here send every credit twice, as a producer that retried
// after a lost answer would, and a forged webhook comes in too; the
// balances show each credit once.
//
// The brokers are the ones on 127.0.0.1 (a part whose broker does not
// answer says so and is skipped):
//
//	go run ./examples/inbox
//	go run ./examples/inbox -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable' \
//		-nats nats://127.0.0.1:4222 -amqp amqp://guest:guest@127.0.0.1:5672/
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stripe/stripe-go/v82"
	"github.com/stripe/stripe-go/v82/webhook"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/migrations"
	"github.com/exactlyonce/idempotency/natsinbox"
	"github.com/exactlyonce/idempotency/rabbitinbox"
	"github.com/exactlyonce/idempotency/stripeinbox"
)

var (
	natsURL = flag.String("nats", "nats://127.0.0.1:4222", "NATS server with JetStream")
	amqpURL = flag.String("amqp", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ server")
)

func main() {
	exampledb.Main("inbox", func(ctx context.Context, w io.Writer, db *sqlx.DB) error {
		return run(ctx, w, db, *natsURL, *amqpURL)
	})
}

// credit is what every source delivers: an amount for an account.
type credit struct {
	Account string `json:"account"`
	Amount  int    `json:"amount"`
}

// apply writes the credit through tx: it commits with the message's key.
func apply(ctx context.Context, tx *sqlx.Tx, source, id string, c credit) error {
	_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO credits (source, id, account, amount) VALUES (?, ?, ?, ?)`),
		source, id, c.Account, c.Amount)
	return err
}

func parse(body []byte) (credit, error) {
	account, amount, ok := strings.Cut(string(body), ":")
	n, err := strconv.Atoi(amount)
	if !ok || err != nil {
		// No redelivery will parse it: stored as final, dead-lettered.
		return credit{}, idempotency.Final(fmt.Errorf("credit %q: want account:amount", body))
	}
	return credit{Account: account, Amount: n}, nil
}

func run(ctx context.Context, w io.Writer, db *sqlx.DB, natsURL, amqpURL string) error {
	if err := migrations.Up(ctx, db); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE credits (source VARCHAR(64) NOT NULL, id VARCHAR(255) NOT NULL, account VARCHAR(64) NOT NULL, amount INTEGER NOT NULL)`); err != nil {
		return err
	}
	// Stripe retries for three days: keep keys a week.
	store, err := idempotency.New(db, idempotency.WithTTL(7*24*time.Hour))
	if err != nil {
		return err
	}
	in, err := inbox.New(store, inbox.WithMaxAttempts(5))
	if err != nil {
		return err
	}
	run := exampledb.NewID("")[:6] // names of this run's stream and queue
	credits := []string{"alice:100", "bob:50", "alice:25"}

	if err := fromNATS(ctx, w, in, natsURL, run, credits); err != nil {
		return fmt.Errorf("consuming from NATS: %w", err)
	}
	if err := fromRabbitMQ(ctx, w, in, amqpURL, run, credits); err != nil {
		return fmt.Errorf("consuming from RabbitMQ: %w", err)
	}
	if err := fromStripe(w, in); err != nil {
		return fmt.Errorf("receiving Stripe webhooks: %w", err)
	}

	rows, err := db.QueryxContext(ctx, `SELECT source, account, SUM(amount), COUNT(*) FROM credits GROUP BY source, account ORDER BY source, account`)
	if err != nil {
		return err
	}
	defer rows.Close()
	fmt.Fprintln(w, "balances (source, account, total, credits):")
	for rows.Next() {
		var source, account string
		var total, n int
		if err := rows.Scan(&source, &account, &total, &n); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %-8s %-6s %4d from %d credits\n", source, account, total, n)
	}
	return rows.Err()
}

// fromNATS publishes each credit twice with the same Credit-Id (JetStream
// dedupes Nats-Msg-Id only within its window; this producer retried
// later) and consumes the stream through the inbox.
func fromNATS(ctx context.Context, w io.Writer, in *inbox.Inbox[*sqlx.Tx], url, run string, credits []string) error {
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		fmt.Fprintf(w, "NATS: skipped, no server at %s (%v)\n", url, err)
		return nil
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	stream := "CREDITS_" + run
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{stream}}); err != nil {
		return err
	}
	defer js.DeleteStream(context.Background(), stream)
	for range 2 {
		for i, c := range credits {
			msg := nats.NewMsg(stream)
			msg.Header.Set("Credit-Id", fmt.Sprint("credit-", i))
			msg.Data = []byte(c)
			if _, err := js.PublishMsg(ctx, msg); err != nil {
				return err
			}
		}
	}
	consumer, err := js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		return err
	}
	c, err := natsinbox.New(in, "nats/"+stream, func(ctx context.Context, tx *sqlx.Tx, msg jetstream.Msg) error {
		cr, err := parse(msg.Data())
		if err != nil {
			return err
		}
		return apply(ctx, tx, "nats", msg.Headers().Get("Credit-Id"), cr)
	}, natsinbox.WithMessageID(func(m jetstream.Msg) (string, error) { return m.Headers().Get("Credit-Id"), nil }))
	if err != nil {
		return err
	}
	acks, replays := 0, 0
	for range 2 * len(credits) {
		msg, err := consumer.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			return err
		}
		v, err := c.Handle(ctx, msg)
		if err != nil {
			return err
		}
		if v.Action == inbox.Ack {
			acks++
		}
		if v.Replayed {
			replays++
		}
	}
	fmt.Fprintf(w, "NATS: %d deliveries acked, %d of them replays (already applied)\n", acks, replays)
	return nil
}

// fromRabbitMQ does the same through a quorum queue, keyed by MessageId.
func fromRabbitMQ(ctx context.Context, w io.Writer, in *inbox.Inbox[*sqlx.Tx], url, run string, credits []string) error {
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
	if err != nil {
		fmt.Fprintf(w, "RabbitMQ: skipped, no server at %s (%v)\n", url, err)
		return nil
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	queue := "credits." + run
	if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		return err
	}
	defer ch.QueueDelete(queue, false, false, false)
	for range 2 {
		for i, c := range credits {
			if err := ch.PublishWithContext(ctx, "", queue, false, false,
				amqp.Publishing{MessageId: fmt.Sprint("credit-", i), Body: []byte(c)}); err != nil {
				return err
			}
		}
	}
	c, err := rabbitinbox.New(in, "amqp/"+queue, func(ctx context.Context, tx *sqlx.Tx, d amqp.Delivery) error {
		cr, err := parse(d.Body)
		if err != nil {
			return err
		}
		return apply(ctx, tx, "rabbitmq", d.MessageId, cr)
	})
	if err != nil {
		return err
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	acks, replays := 0, 0
	for range 2 * len(credits) {
		v, err := c.Handle(ctx, <-deliveries)
		if err != nil {
			return err
		}
		if v.Action == inbox.Ack {
			acks++
		}
		if v.Replayed {
			replays++
		}
	}
	fmt.Fprintf(w, "RabbitMQ: %d deliveries acked, %d of them replays (already applied)\n", acks, replays)
	return nil
}

// fromStripe serves a Stripe webhook endpoint and sends it a signed event
// twice (its first answer lost, say) and a forged one.
func fromStripe(w io.Writer, in *inbox.Inbox[*sqlx.Tx]) error {
	const secret = "whsec_example"
	h, err := stripeinbox.Handler(in, []string{secret}, func(ctx context.Context, tx *sqlx.Tx, ev stripe.Event) error {
		amount, _ := ev.Data.Object["amount"].(float64)
		customer, _ := ev.Data.Object["customer"].(string)
		return apply(ctx, tx, "stripe", ev.ID, credit{Account: customer, Amount: int(amount)})
	})
	if err != nil {
		return err
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	event := fmt.Appendf(nil, `{"id":"evt_1","object":"event","type":"charge.succeeded","api_version":%q,"data":{"object":{"object":"charge","amount":70,"customer":"alice"}}}`, stripe.APIVersion)
	send := func(body []byte, secret string) (int, error) {
		signed := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: time.Now()})
		req, err := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Stripe-Signature", signed.Header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		_ = resp.Body.Close()
		return resp.StatusCode, nil
	}
	for _, c := range []struct {
		what   string
		secret string
	}{{"event evt_1", secret}, {"event evt_1 again", secret}, {"a forged event", "whsec_guessed"}} {
		code, err := send(event, c.secret)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "Stripe: %s: %d\n", c.what, code)
	}
	return nil
}
