package pgxstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

var (
	fp  = bytes.Repeat([]byte{1}, 32)
	ttl = time.Hour
)

// insertCharge is fn's business write.
func insertCharge(t *testing.T, tx pgx.Tx, k string) {
	t.Helper()
	if _, err := tx.Exec(context.Background(), `INSERT INTO charges (k, amount) VALUES ($1, 100)`, k); err != nil {
		t.Fatal(err)
	}
}

func begin(t *testing.T, d *driver, k dialects.Key) pgx.Tx {
	t.Helper()
	tx, c, _, err := d.Begin(context.Background(), k, fp, ttl)
	if err != nil || c != dialects.Claimed {
		t.Fatalf("Begin: %v, %v; want Claimed", c, err)
	}
	return tx
}

// TestDriverClaimCommitFound walks a key through its life on the driver
// alone: claimed, saved with fn's write in one commit, then found (with its
// record) by the next Begin and by Lookup, with every connection back in
// the pool.
func TestDriverClaimCommitFound(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	for _, level := range []sql.IsolationLevel{sql.LevelDefault, sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelSerializable} {
		t.Run(level.String(), func(t *testing.T) {
			d := testDriver(t, pool, dialects.Config{Isolation: level})
			k := key(t, "life-"+level.String())
			ctx := context.Background()
			tx := begin(t, d, k)
			insertCharge(t, tx, k.Key)
			rec := dialects.Record{Fingerprint: fp, Value: []byte(`{"id":1}`), Failed: true}
			if err := d.Commit(ctx, tx, k, rec, ttl); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			d.Rollback(tx) // after Commit: nothing to do
			if n := count(t, pool, "charges", k.Key); n != 1 {
				t.Fatalf("%d charges, want 1", n)
			}
			_, c, got, err := d.Begin(ctx, k, fp, ttl)
			if err != nil || c != dialects.Found {
				t.Fatalf("second Begin: %v, %v; want Found", c, err)
			}
			if !bytes.Equal(got.Fingerprint, fp) || string(got.Value) != `{"id":1}` || !got.Failed {
				t.Fatalf("found %+v", got)
			}
			got, ok, err := d.Lookup(ctx, k)
			if err != nil || !ok || string(got.Value) != `{"id":1}` {
				t.Fatalf("Lookup: %+v, %v, %v", got, ok, err)
			}
			if n := pool.Stat().AcquiredConns(); n != 0 {
				t.Fatalf("%d connections acquired after the key's life", n)
			}
		})
	}
}

// TestDriverHeld: while a transaction holds a key, Begin reports Held and
// has already rolled back; once the holder rolls back, the key is free.
func TestDriverHeld(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	d := testDriver(t, pool, dialects.Config{})
	k := key(t, "held")
	ctx := context.Background()
	holder := begin(t, d, k)
	insertCharge(t, holder, k.Key)
	tx, c, _, err := d.Begin(ctx, k, fp, ttl)
	if err != nil || c != dialects.Held || tx != nil {
		t.Fatalf("twin's Begin: %v, %v, %v; want Held and no tx", tx, c, err)
	}
	d.Rollback(holder)
	d.Rollback(holder) // twice is safe
	if _, err := holder.Exec(ctx, `SELECT 1`); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("Exec on a rolled-back tx: %v, want ErrTxClosed", err)
	}
	if n := count(t, pool, "charges", k.Key); n != 0 {
		t.Fatalf("%d charges after the rollback, want 0", n)
	}
	d.Rollback(begin(t, d, k))
}

// TestDriverTxRefusesCommit: fn's Commit and Rollback are refused with a
// message that says why, and leave the transaction open and usable; once
// the driver has ended it, every method says it is closed rather than run
// on a connection back in the pool.
func TestDriverTxRefusesCommit(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	d := testDriver(t, pool, dialects.Config{})
	k := key(t, "refuse")
	ctx := context.Background()
	tx := begin(t, d, k)
	for name, end := range map[string]func(context.Context) error{"Commit": tx.Commit, "Rollback": tx.Rollback} {
		if err := end(ctx); !errors.Is(err, errOwned) {
			t.Fatalf("fn's %s: %v, want errOwned", name, err)
		}
	}
	insertCharge(t, tx, k.Key)
	nested, err := tx.Begin(ctx) // savepoints are fn's to use
	if err != nil {
		t.Fatal(err)
	}
	insertCharge(t, nested, k.Key)
	if err := nested.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, ttl); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if n := count(t, pool, "charges", k.Key); n != 1 {
		t.Fatalf("%d charges, want 1 (the savepoint's was rolled back)", n)
	}
	if _, err := tx.Exec(ctx, `SELECT 1`); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("Exec after Commit: %v", err)
	}
	rows, err := tx.Query(ctx, `SELECT 1`)
	if !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("Query after Commit: %v", err)
	}
	rows.Close()
	if err := tx.QueryRow(ctx, `SELECT 1`).Scan(new(int)); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("QueryRow after Commit: %v", err)
	}
	if err := tx.SendBatch(ctx, &pgx.Batch{}).Close(); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("SendBatch after Commit: %v", err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("Commit after Commit: %v", err)
	}
	if err := d.Commit(ctx, tx, k, dialects.Record{}, ttl); !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("driver's second Commit: %v", err)
	}
}

// TestDriverConflictNeverCommits: when a live row appears for the key after
// the claim (a twin that slipped past it), the INSERT of the save pipeline
// fails and the COMMIT queued behind it never runs: fn's write is gone, the
// error wraps ErrConflict, and the connection is clean for the next caller.
func TestDriverConflictNeverCommits(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	d := testDriver(t, pool, dialects.Config{})
	k := key(t, "conflict")
	ctx := context.Background()
	tx := begin(t, d, k)
	insertCharge(t, tx, k.Key)
	// The advisory lock does not stop a plain INSERT on another connection.
	if _, err := pool.Exec(ctx, `INSERT INTO idempotency_keys (scope, key, fingerprint, value, expires_at)
VALUES ($1, $2, '\x01', '"rogue"', now() + interval '1 hour')`, k.Scope, k.Key); err != nil {
		t.Fatal(err)
	}
	err := d.Commit(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, ttl)
	if !errors.Is(err, dialects.ErrConflict) {
		t.Fatalf("Commit: %v, want ErrConflict", err)
	}
	var ce *dialects.CommitError
	if errors.As(err, &ce) {
		t.Fatalf("Commit: %v is a CommitError; the COMMIT never ran", err)
	}
	if n := count(t, pool, "charges", k.Key); n != 0 {
		t.Fatalf("%d charges committed after a failed save, want 0", n)
	}
	// The connection went back idle: the next transaction on it works.
	k2 := key(t, "conflict-next")
	tx = begin(t, d, k2)
	insertCharge(t, tx, k2.Key)
	if err := d.Commit(ctx, tx, k2, dialects.Record{Fingerprint: fp, Value: []byte(`2`)}, ttl); err != nil {
		t.Fatalf("Commit on the reused connection: %v", err)
	}
}

// TestDriverIgnoredError: fn that swallows a statement's error leaves the
// transaction aborted; the save then fails with the dialect's explanation
// and nothing commits.
func TestDriverIgnoredError(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	d := testDriver(t, pool, dialects.Config{})
	ctx := context.Background()
	for _, warm := range []bool{false, true} { // cold: the save's statements are prepared first
		k := key(t, "ignored-"+map[bool]string{false: "cold", true: "warm"}[warm])
		tx := begin(t, d, k)
		insertCharge(t, tx, k.Key)
		_, _ = tx.Exec(ctx, `SELECT 1/0`)
		err := d.Commit(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, ttl)
		if err == nil || d.Classify(err) != dialects.Definite {
			t.Fatalf("Commit after an ignored error: %v, want a definite error", err)
		}
		if want := "return every error of tx"; !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Fatalf("Commit: %v, want it to say %q", err, want)
		}
		if n := count(t, pool, "charges", k.Key); n != 0 {
			t.Fatalf("%d charges, want 0", n)
		}
	}
}

// TestDriverOpenRows: fn that returns with rows still open cannot have its
// key saved; the driver says so and drops the busy connection.
func TestDriverOpenRows(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	d := testDriver(t, pool, dialects.Config{})
	k := key(t, "rows")
	ctx := context.Background()
	tx := begin(t, d, k)
	insertCharge(t, tx, k.Key)
	rows, err := tx.Query(ctx, `SELECT generate_series(1, 10000)`)
	if err != nil {
		t.Fatal(err)
	}
	rows.Next() // and never closed
	err = d.Commit(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, ttl)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("close every pgx.Rows")) {
		t.Fatalf("Commit with open rows: %v", err)
	}
	if n := count(t, pool, "charges", k.Key); n != 0 {
		t.Fatalf("%d charges, want 0", n)
	}
}

// TestDriverEndedByFn: fn that sends COMMIT itself gets ErrTransactionEnded
// from the save, not a second commit.
func TestDriverEndedByFn(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	d := testDriver(t, pool, dialects.Config{})
	k := key(t, "ended")
	tx := begin(t, d, k)
	if _, err := tx.Exec(context.Background(), `COMMIT`); err != nil {
		t.Fatal(err)
	}
	err := d.Commit(context.Background(), tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, ttl)
	if !errors.Is(err, dialects.ErrTransactionEnded) {
		t.Fatalf("Commit: %v, want ErrTransactionEnded", err)
	}
	if n := count(t, pool, "idempotency_keys", k.Key); n != 0 {
		t.Fatalf("%d keys saved, want 0", n)
	}
}

// TestDriverExpired: an expired row is no record for Begin, and the save
// pipeline's DELETE clears it for the INSERT. DeleteExpired and Prune
// remove expired rows and leave live ones.
func TestDriverExpired(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	d := testDriver(t, pool, dialects.Config{})
	ctx := context.Background()
	k := key(t, "expired")
	tx := begin(t, d, k)
	if err := d.Commit(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, time.Microsecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	tx = begin(t, d, k) // the expired row is no record
	if err := d.Commit(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`2`)}, ttl); err != nil {
		t.Fatalf("Commit over an expired row: %v", err)
	}
	if rec, ok, err := d.Lookup(ctx, k); err != nil || !ok || string(rec.Value) != `2` {
		t.Fatalf("Lookup: %s, %v, %v", rec.Value, ok, err)
	}

	for _, name := range []string{"a", "b", "c"} {
		k := key(t, "prune-"+name)
		tx := begin(t, d, k)
		if err := d.Commit(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, time.Microsecond); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Millisecond)
	if err := d.DeleteExpired(ctx, key(t, "prune-a")); err != nil {
		t.Fatal(err)
	}
	if n, err := d.Prune(ctx, 1); err != nil || n != 1 {
		t.Fatalf("Prune(1): %d, %v", n, err)
	}
	if n, err := d.Prune(ctx, 100); err != nil || n != 1 {
		t.Fatalf("Prune(100): %d, %v", n, err)
	}
	if n := count(t, pool, "idempotency_keys", k.Key); n != 1 {
		t.Fatalf("the live key was pruned")
	}
}

// TestDriverCallerTx runs the DoTx steps in a transaction of the caller's:
// claim under a savepoint, save (true, then false for a live record), the
// lookup that sees the caller's own uncommitted key, and RollbackTo, which
// undoes only what came after its savepoint.
func TestDriverCallerTx(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	d := testDriver(t, pool, dialects.Config{})
	ctx := context.Background()
	outer, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Rollback(ctx)
	k := key(t, "caller")
	if err := d.Savepoint(ctx, outer, "idempotency_1"); err != nil {
		t.Fatal(err)
	}
	c, _, err := d.Claim(ctx, outer, k, fp, ttl)
	if err != nil || c != dialects.Claimed {
		t.Fatalf("Claim: %v, %v", c, err)
	}
	insertCharge(t, outer, k.Key)
	if ok, err := d.Save(ctx, outer, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, ttl); err != nil || !ok {
		t.Fatalf("Save: %v, %v", ok, err)
	}
	if err := d.Release(ctx, outer, "idempotency_1"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := d.Lookup(ctx, k); ok {
		t.Fatal("Lookup outside the caller's transaction sees its uncommitted key")
	}
	if rec, ok, err := d.LookupTx(ctx, outer, k); err != nil || !ok || string(rec.Value) != `1` {
		t.Fatalf("LookupTx: %s, %v, %v", rec.Value, ok, err)
	}

	if err := d.Savepoint(ctx, outer, "idempotency_2"); err != nil {
		t.Fatal(err)
	}
	c, rec, err := d.Claim(ctx, outer, k, fp, ttl)
	if err != nil || c != dialects.Found || string(rec.Value) != `1` {
		t.Fatalf("Claim of the saved key: %v, %s, %v", c, rec.Value, err)
	}
	if ok, err := d.Save(ctx, outer, k, dialects.Record{Fingerprint: fp, Value: []byte(`2`)}, ttl); err != nil || ok {
		t.Fatalf("Save over a live record: %v, %v; want false", ok, err)
	}
	insertCharge(t, outer, k.Key)
	if err := d.RollbackTo(ctx, outer, "idempotency_2"); err != nil {
		t.Fatal(err)
	}
	if err := d.Release(ctx, outer, "idempotency_2"); err == nil {
		t.Fatal("RollbackTo left its savepoint in place")
	}
}

// TestDriverPlain: a transaction without a key commits through
// CommitPlain, refuses fn's Commit, and rolls back through Rollback.
func TestDriverPlain(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	d := testDriver(t, pool, dialects.Config{Isolation: sql.LevelSerializable})
	ctx := context.Background()
	tx, err := d.BeginPlain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var level string
	if err := tx.QueryRow(ctx, `SHOW transaction_isolation`).Scan(&level); err != nil || level != "serializable" {
		t.Fatalf("isolation %q, %v", level, err)
	}
	insertCharge(t, tx, "plain")
	if err := tx.Commit(ctx); !errors.Is(err, errOwned) {
		t.Fatalf("handler's Commit: %v", err)
	}
	if err := d.CommitPlain(tx); err != nil {
		t.Fatal(err)
	}
	d.Rollback(tx)
	tx, err = d.BeginPlain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	insertCharge(t, tx, "plain")
	d.Rollback(tx)
	if n := count(t, pool, "charges", "plain"); n != 1 {
		t.Fatalf("%d plain charges, want 1", n)
	}
	if _, err := newDriver(pool, dialects.Config{Isolation: sql.LevelSnapshot}); err == nil {
		t.Fatal("newDriver accepted SNAPSHOT isolation")
	}
}

// TestDriverBeginObeysCtx: Begin gives up on a connection wait when ctx
// ends, and a cancelled context closes nothing it should not.
func TestDriverBeginObeysCtx(t *testing.T) {
	t.Parallel()
	pool := openPool(t, testDSN(t), func(c *pgxpool.Config) { c.MaxConns = 1 })
	d := testDriver(t, pool, dialects.Config{})
	holder := begin(t, d, key(t, "ctx-a"))
	defer d.Rollback(holder)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, _, err := d.Begin(ctx, key(t, "ctx-b"), fp, ttl); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Begin with no connection free: %v, want the deadline", err)
	}
}

// TestDriverRoundTrips counts round trips at the wire on a warm connection:
// a fresh key is [BEGIN, lock, read], fn's INSERT, [INSERT, COMMIT]: 3; a
// replay is [BEGIN, lock, read], ROLLBACK: 2; a held key is 2 as well. On a
// server whose default level is REPEATABLE READ, a fresh claim is made
// again with the probing idempotency_claim: 4.
func TestDriverRoundTrips(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		level string // the server's default_transaction_isolation
		fresh int64
	}{
		{"read committed", 3},
		{"repeatable read", 4},
	} {
		t.Run(tc.level, func(t *testing.T) {
			t.Parallel()
			dsn := testDSN(t)
			_, target := testdb.Rehost(t, "postgres", dsn, "")
			proxy := startProxy(t, target)
			dsn, _ = testdb.Rehost(t, "postgres", dsn, proxy.Addr())
			pool := openPool(t, dsn, func(c *pgxpool.Config) {
				c.MaxConns = 1
				// pgxpool pings a connection idle for over a second before
				// handing it out: a round trip of the pool's, not the
				// protocol's.
				c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
				c.ConnConfig.RuntimeParams["default_transaction_isolation"] = tc.level
			})
			d := testDriver(t, pool, dialects.Config{})
			ctx := context.Background()
			fresh := func(k dialects.Key) {
				tx := begin(t, d, k)
				insertCharge(t, tx, k.Key)
				if err := d.Commit(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, ttl); err != nil {
					t.Fatal(err)
				}
			}
			fresh(key(t, "warm-up")) // prepares the statements on the connection
			if _, c, _, err := d.Begin(ctx, key(t, "warm-up"), fp, ttl); err != nil || c != dialects.Found {
				t.Fatal(c, err)
			}
			if _, ok, err := d.Lookup(ctx, key(t, "warm-up")); err != nil || !ok {
				t.Fatal(ok, err)
			}

			before := proxy.Trips()
			fresh(key(t, "fresh"))
			if n := proxy.Trips() - before; n != tc.fresh {
				t.Errorf("fresh key: %d round trips, want %d", n, tc.fresh)
			}
			before = proxy.Trips()
			if _, c, _, err := d.Begin(ctx, key(t, "fresh"), fp, ttl); err != nil || c != dialects.Found {
				t.Fatal(c, err)
			}
			if n := proxy.Trips() - before; n != 2 {
				t.Errorf("replay: %d round trips, want 2", n)
			}
			before = proxy.Trips()
			if _, ok, err := d.Lookup(ctx, key(t, "fresh")); err != nil || !ok {
				t.Fatal(ok, err)
			}
			if n := proxy.Trips() - before; n != 1 {
				t.Errorf("lookup: %d round trips, want 1", n)
			}
		})
	}
}

// TestDriverLostCommit cuts the connection at the save pipeline, which
// carries the COMMIT: whether the COMMIT reached the server (it commits)
// or not (nothing commits), the client cannot tell, and Commit returns a
// CommitError the engine classifies as a lost connection. It runs in pgx's
// default mode, cut by the fault proxy at the pipeline's message, and in
// QueryExecModeExec, where the statements' text crosses the wire and
// faultproxy (which the chaos run uses) finds the COMMIT by its name.
func TestDriverLostCommit(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		after bool // the COMMIT reached the server
		exec  bool // QueryExecModeExec and faultproxy
	}{
		{"default/after", true, false},
		{"default/before", false, false},
		{"exec/after", true, true},
		{"exec/before", false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dsn := testDSN(t)
			admin := openPool(t, dsn, nil)
			_, target := testdb.Rehost(t, "postgres", dsn, "")
			proxy := startProxy(t, target)
			dsn, _ = testdb.Rehost(t, "postgres", dsn, proxy.Addr())
			cut := map[bool]faultproxy.Mode{true: faultproxy.CutAfterNext, false: faultproxy.CutBeforeNext}
			if tc.exec {
				cut = map[bool]faultproxy.Mode{true: faultproxy.CutAfterCommit, false: faultproxy.CutBeforeCommit}
			}
			arm := func() { proxy.Arm(cut[tc.after]) }
			pool := openPool(t, dsn, func(c *pgxpool.Config) {
				c.MaxConns = 1
				if tc.exec {
					c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
				}
			})
			d := testDriver(t, pool, dialects.Config{})
			ctx := context.Background()

			// Warm the connection: a cold save pipeline first prepares its
			// statements in a round trip of its own, which would be cut
			// instead.
			warm := key(t, "warm")
			tx := begin(t, d, warm)
			if err := d.Commit(ctx, tx, warm, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, ttl); err != nil {
				t.Fatal(err)
			}

			k := key(t, "cut")
			tx = begin(t, d, k)
			insertCharge(t, tx, k.Key)
			arm()
			err := d.Commit(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte(`1`)}, ttl)
			var ce *dialects.CommitError
			if !errors.As(err, &ce) || d.Classify(ce.Err) != dialects.Lost {
				t.Fatalf("Commit, cut: %v, want a CommitError of a lost connection", err)
			}
			// In QueryExecModeExec pgx reports the cut as "conn closed",
			// whose SafeToRetry claims nothing was sent: see Commit.
			t.Logf("pgx's error: %v (%T), SafeToRetry %v", ce.Err, ce.Err, pgconn.SafeToRetry(ce.Err))
			want := 0
			if tc.after {
				want = 1
			}
			deadline := time.Now().Add(5 * time.Second)
			for count(t, admin, "idempotency_keys", k.Key) != want && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond) // the server commits after the client is gone
			}
			if n, c := count(t, admin, "idempotency_keys", k.Key), count(t, admin, "charges", k.Key); n != want || c != want {
				t.Fatalf("%d keys and %d charges, want %d of each", n, c, want)
			}
		})
	}
}
