package main

import (
	"context"
	"io"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/examples/internal/exampletest"
	"github.com/exactlyonce/idempotency/internal/testbroker"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestExample runs the example against the real brokers on its default
// SQLite file and on every backend, and checks that each source's credits
// were applied once although each was delivered twice, and that the
// forged webhook was refused.
func TestExample(t *testing.T) { exampletest.Each(t, "inbox", check) }

func check(t *testing.T, _ testdb.Backend, db *sqlx.DB) {
	t.Helper()
	natsURL, amqpURL := testbroker.NATS(t), testbroker.RabbitMQ(t)
	text := exampletest.Output(t, db, func(ctx context.Context, w io.Writer, db *sqlx.DB) error {
		return run(ctx, w, db, natsURL, amqpURL)
	})
	exampletest.Contains(t, text,
		"NATS: 6 deliveries acked, 3 of them replays",
		"RabbitMQ: 6 deliveries acked, 3 of them replays",
		"Stripe: event evt_1: 200",
		"Stripe: event evt_1 again: 200",
		"Stripe: a forged event: 400",
	)
	var rows []struct {
		Source string `db:"source"`
		N      int    `db:"n"`
		Total  int    `db:"total"`
	}
	if err := db.Select(&rows, `SELECT source, COUNT(*) AS n, SUM(amount) AS total FROM credits GROUP BY source ORDER BY source`); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]int{"nats": {3, 175}, "rabbitmq": {3, 175}, "stripe": {1, 70}}
	if len(rows) != len(want) {
		t.Fatalf("credits by source %+v, want %v", rows, want)
	}
	for _, r := range rows {
		if w := want[r.Source]; r.N != w[0] || r.Total != w[1] {
			t.Errorf("%s: %d credits totalling %d, want %d totalling %d", r.Source, r.N, r.Total, w[0], w[1])
		}
	}
}
