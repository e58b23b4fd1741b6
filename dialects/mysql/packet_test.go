package mysql_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestValueOverMaxAllowedPacket: a value larger than the server's
// max_allowed_packet cannot be saved, however often the call runs. Sent,
// the server answers 1153 and closes the connection, or resets it while
// the value is still being written, which looks like any lost connection.
// fn runs once, and the call fails with an error that names
// max_allowed_packet and leaves the key free: the same key then runs with a
// value that fits. Joined to a caller's transaction (DoTx), the call fails
// the same way and the caller's transaction lives on. A large value under
// the limit is stored and replayed.
func TestValueOverMaxAllowedPacket(t *testing.T) {
	t.Parallel()
	b := testdb.Backend{Name: "mysql", Driver: "mysql", Kind: "mysql"}
	db := b.Open(t)
	var limit int
	if err := db.Get(&limit, `SELECT @@max_allowed_packet`); err != nil {
		t.Fatal(err)
	}
	if limit > 64<<20 {
		t.Skipf("the server's max_allowed_packet is %d bytes: a value over it is too big for a test", limit)
	}
	s, err := idempotency.New(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var runs atomic.Int32
	value := func(v string) func(context.Context, *sqlx.Tx) (string, error) {
		return func(context.Context, *sqlx.Tx) (string, error) {
			runs.Add(1)
			return v, nil
		}
	}

	// Well over the limit, the server resets the connection while the
	// value is still being written, rather than answer 1153 (which it
	// tends to do just over it): sent, this value would look like a lost
	// connection.
	size := 2 * limit
	_, err = idempotency.Do(ctx, s, "over", nil, value(strings.Repeat("x", size)))
	if n := runs.Load(); n != 1 {
		t.Errorf("fn ran %d times for a value of %d bytes, over max_allowed_packet (%d), want once", n, size, limit)
	}
	if err == nil || !strings.Contains(err.Error(), "max_allowed_packet") {
		t.Errorf("a value over max_allowed_packet: %v; want an error naming max_allowed_packet", err)
	}
	if errors.Is(err, idempotency.ErrOutcomeUnknown) {
		t.Errorf("a value over max_allowed_packet: %v; nothing was committed, and the error should say so", err)
	}
	v, err := idempotency.Do(ctx, s, "over", nil, value("small"))
	if err != nil || v != "small" || runs.Load() != 2 {
		t.Errorf("the key after the failed call: %q, %v, %d runs in all; want a fresh run", v, err, runs.Load())
	}

	// In a caller's transaction (DoTx) nothing is sent either, so the
	// caller's transaction survives the failed call and commits its own
	// work.
	if _, err := db.Exec(testdb.Charges); err != nil {
		t.Fatal(err)
	}
	runs.Store(0)
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.Exec(`INSERT INTO charges (ref, amount) VALUES ('caller', 1)`); err != nil {
		t.Fatal(err)
	}
	_, err = idempotency.DoTx(ctx, tx, s, "over-tx", nil, value(strings.Repeat("x", size)))
	if runs.Load() != 1 || err == nil || !strings.Contains(err.Error(), "max_allowed_packet") {
		t.Errorf("DoTx with a value over max_allowed_packet: %v, %d runs; want an error naming max_allowed_packet, one run", err, runs.Load())
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("the caller's transaction after the failed DoTx: %v", err)
	}
	var n int
	if err := db.Get(&n, `SELECT COUNT(*) FROM charges WHERE ref = 'caller'`); err != nil || n != 1 {
		t.Errorf("the caller's own write: %d rows, %v; want 1", n, err)
	}

	// Under the limit, a value too large to go unchecked is stored.
	runs.Store(0)
	big := strings.Repeat("y", 1<<20)
	for range 2 {
		v, err := idempotency.Do(ctx, s, "under", nil, value(big))
		if err != nil || v != big {
			t.Fatalf("a value of %d bytes, under max_allowed_packet: %d bytes back, %v", len(big), len(v), err)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("fn ran %d times for two calls under the limit, want once (the second replays)", n)
	}
}
