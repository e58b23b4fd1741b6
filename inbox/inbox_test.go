package inbox_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// env is one store with a way to write and count a business row.
type env[TTx any] struct {
	store  *idempotency.TxStore[TTx]
	credit func(ctx context.Context, tx TTx, ref string) error
	count  func(t *testing.T, ref string) int
}

// TestHandle runs the suite on every database/sql backend and on the pgx
// store.
func TestHandle(t *testing.T) {
	t.Parallel()
	for _, b := range testdb.Backends() {
		if b.Server == "tidb" {
			continue // the conformance suite covers TiDB; the inbox adds nothing there
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			db := b.Open(t)
			db.MustExec(testdb.Charges)
			store, err := idempotency.New(db)
			if err != nil {
				t.Fatal(err)
			}
			suite(t, env[*sqlx.Tx]{
				store: store,
				credit: func(ctx context.Context, tx *sqlx.Tx, ref string) error {
					_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO charges (ref, amount) VALUES (?, 1)`), ref)
					return err
				},
				count: func(t *testing.T, ref string) int {
					var n int
					if err := db.Get(&n, db.Rebind(`SELECT COUNT(*) FROM charges WHERE ref = ?`), ref); err != nil {
						t.Fatal(err)
					}
					return n
				},
			})
		})
	}
	t.Run("pgx-native", func(t *testing.T) {
		t.Parallel()
		pool := openPool(t)
		store, err := pgxstore.New(pool)
		if err != nil {
			t.Fatal(err)
		}
		suite(t, env[pgx.Tx]{
			store: store,
			credit: func(ctx context.Context, tx pgx.Tx, ref string) error {
				_, err := tx.Exec(ctx, `INSERT INTO charges (ref, amount) VALUES ($1, 1)`, ref)
				return err
			},
			count: func(t *testing.T, ref string) int {
				var n int
				if err := pool.QueryRow(context.Background(), `SELECT COUNT(*) FROM charges WHERE ref = $1`, ref).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			},
		})
	})
}

// openPool returns a pgx pool on a fresh, migrated Postgres database with
// the charges table.
func openPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	b := testdb.Backend{Name: "pgx", Driver: "pgx", Kind: "postgres"}
	pool, err := pgxpool.New(context.Background(), b.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ctx := context.Background()
	if err := pgxstore.Up(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, testdb.Charges); err != nil {
		t.Fatal(err)
	}
	return pool
}

func suite[TTx any](t *testing.T, e env[TTx]) {
	ctx := context.Background()
	in, err := inbox.New(e.store, inbox.WithMaxAttempts(3), inbox.WithBackoff(func(n int) time.Duration { return time.Duration(n) * time.Second }))
	if err != nil {
		t.Fatal(err)
	}
	credit := func(ref string, runs *atomic.Int32) func(context.Context, TTx) error {
		return func(ctx context.Context, tx TTx) error {
			runs.Add(1)
			return e.credit(ctx, tx, ref)
		}
	}

	t.Run("applied once, redelivery acked without running", func(t *testing.T) {
		var runs atomic.Int32
		d := inbox.Delivery{Source: "orders", ID: "m-1", Attempt: 1}
		if v := in.Handle(ctx, d, credit("m-1", &runs)); v.Action != inbox.Ack || v.Replayed || v.Err != nil {
			t.Fatalf("first delivery: %+v, want a fresh ack", v)
		}
		d.Attempt = 2
		if v := in.Handle(ctx, d, credit("m-1", &runs)); v.Action != inbox.Ack || !v.Replayed {
			t.Fatalf("redelivery: %+v, want a replayed ack", v)
		}
		if runs.Load() != 1 || e.count(t, "m-1") != 1 {
			t.Fatalf("handler ran %d times, %d rows; want 1 and 1", runs.Load(), e.count(t, "m-1"))
		}
	})

	t.Run("the same id in another source is another message", func(t *testing.T) {
		var runs atomic.Int32
		for _, src := range []string{"orders-a", "orders-b"} {
			if v := in.Handle(ctx, inbox.Delivery{Source: src, ID: "same", Attempt: 1}, credit("same", &runs)); v.Action != inbox.Ack || v.Replayed {
				t.Fatalf("%s: %+v, want a fresh ack", src, v)
			}
		}
		if n := e.count(t, "same"); n != 2 {
			t.Fatalf("%d rows, want 2", n)
		}
	})

	t.Run("a failure rolls back and retries, then dead-letters on the last attempt", func(t *testing.T) {
		boom := errors.New("boom")
		fail := func(ctx context.Context, tx TTx) error {
			if err := e.credit(ctx, tx, "m-2"); err != nil {
				return err
			}
			return boom
		}
		for attempt := 1; attempt <= 3; attempt++ {
			v := in.Handle(ctx, inbox.Delivery{Source: "orders", ID: "m-2", Attempt: attempt}, fail)
			if !errors.Is(v.Err, boom) {
				t.Fatalf("attempt %d: err %v, want the handler's", attempt, v.Err)
			}
			if attempt < 3 && (v.Action != inbox.Retry || v.Delay != time.Duration(attempt)*time.Second) {
				t.Fatalf("attempt %d: %+v, want a retry after %ds", attempt, v, attempt)
			}
			if attempt == 3 && (v.Action != inbox.DeadLetter || !errors.Is(v.Err, inbox.ErrPoison)) {
				t.Fatalf("attempt 3: %+v, want a poison dead-letter", v)
			}
		}
		if n := e.count(t, "m-2"); n != 0 {
			t.Fatalf("%d rows after failures, want 0", n)
		}
		var runs atomic.Int32
		if v := in.Handle(ctx, inbox.Delivery{Source: "orders", ID: "m-2", Attempt: 2}, credit("m-2", &runs)); v.Action != inbox.Ack || v.Replayed {
			t.Fatalf("after the failures: %+v, want a fresh ack (nothing was stored)", v)
		}
	})

	t.Run("a final failure is stored and dead-letters its redeliveries", func(t *testing.T) {
		declined := func(ctx context.Context, tx TTx) error {
			if err := e.credit(ctx, tx, "m-3"); err != nil {
				return err
			}
			return idempotency.FinalCode("unknown_account", errors.New("no such account"))
		}
		v := in.Handle(ctx, inbox.Delivery{Source: "orders", ID: "m-3", Attempt: 1}, declined)
		var final *idempotency.FinalError
		if v.Action != inbox.DeadLetter || v.Replayed || !errors.As(v.Err, &final) || final.Code != "unknown_account" {
			t.Fatalf("first: %+v, want a dead-letter with the final failure", v)
		}
		var runs atomic.Int32
		v = in.Handle(ctx, inbox.Delivery{Source: "orders", ID: "m-3", Attempt: 2}, credit("m-3", &runs))
		if v.Action != inbox.DeadLetter || !v.Replayed || !errors.As(v.Err, &final) || runs.Load() != 0 {
			t.Fatalf("redelivery: %+v (ran %d), want the stored failure without running", v, runs.Load())
		}
		if n := e.count(t, "m-3"); n != 0 {
			t.Fatalf("%d rows, want 0: a final failure rolls back the writes", n)
		}
	})

	t.Run("no id dead-letters without running", func(t *testing.T) {
		var runs atomic.Int32
		v := in.Handle(ctx, inbox.Delivery{Source: "orders", Attempt: 1}, credit("none", &runs))
		if v.Action != inbox.DeadLetter || !errors.Is(v.Err, inbox.ErrNoID) || runs.Load() != 0 {
			t.Fatalf("%+v, ran %d: want ErrNoID without running", v, runs.Load())
		}
	})

	t.Run("a reused id with other params dead-letters", func(t *testing.T) {
		var runs atomic.Int32
		if v := in.Handle(ctx, inbox.Delivery{Source: "orders", ID: "m-4", Attempt: 1, Params: "a"}, credit("m-4", &runs)); v.Action != inbox.Ack {
			t.Fatalf("first: %+v", v)
		}
		v := in.Handle(ctx, inbox.Delivery{Source: "orders", ID: "m-4", Attempt: 1, Params: "b"}, credit("m-4", &runs))
		if v.Action != inbox.DeadLetter || !errors.Is(v.Err, idempotency.ErrParamsMismatch) || runs.Load() != 1 {
			t.Fatalf("%+v, ran %d: want ErrParamsMismatch without running", v, runs.Load())
		}
	})

	t.Run("an id that is no valid key is keyed by its digest", func(t *testing.T) {
		id := strings.Repeat("é", 200) // 400 bytes, not ASCII
		var runs atomic.Int32
		for i := range 2 {
			v := in.Handle(ctx, inbox.Delivery{Source: "orders", ID: id, Attempt: i + 1}, credit("long", &runs))
			if v.Action != inbox.Ack || v.Replayed != (i == 1) {
				t.Fatalf("delivery %d: %+v", i+1, v)
			}
		}
		if runs.Load() != 1 || e.count(t, "long") != 1 {
			t.Fatalf("ran %d, %d rows; want 1 and 1", runs.Load(), e.count(t, "long"))
		}
	})

	t.Run("twins delivered at once apply once and both ack", func(t *testing.T) {
		var runs atomic.Int32
		var wg sync.WaitGroup
		verdicts := make([]inbox.Verdict, 4)
		for i := range verdicts {
			wg.Go(func() {
				verdicts[i] = in.Handle(ctx, inbox.Delivery{Source: "orders", ID: "m-5", Attempt: 1}, credit("m-5", &runs))
			})
		}
		wg.Wait()
		for i, v := range verdicts {
			if v.Action != inbox.Ack {
				t.Fatalf("twin %d: %+v, want an ack", i, v)
			}
		}
		if n := e.count(t, "m-5"); n != 1 {
			t.Fatalf("%d rows, want 1", n)
		}
	})
}

func TestNewOptions(t *testing.T) {
	t.Parallel()
	db := testdb.Backends()[0].Open(t)
	store, err := idempotency.New(db)
	if err != nil {
		t.Fatal(err)
	}
	for name, opt := range map[string]inbox.Option{
		"WithMaxAttempts": inbox.WithMaxAttempts(-1),
		"WithBackoff":     inbox.WithBackoff(nil),
		"WithLogger":      inbox.WithLogger(nil),
	} {
		if _, err := inbox.New(store, opt); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err %v, want one naming the option", name, err)
		}
	}
	if _, err := inbox.New[*sqlx.Tx](nil); err == nil {
		t.Error("New(nil): no error")
	}
}

func TestDefaultBackoff(t *testing.T) {
	t.Parallel()
	for attempt, want := range map[int]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 5: 16 * time.Second, 40: 5 * time.Minute} {
		got := inbox.DefaultBackoff(attempt)
		if got > want || got < want*4/5 {
			t.Errorf("DefaultBackoff(%d) = %v, want within a fifth below %v", attempt, got, want)
		}
	}
}
