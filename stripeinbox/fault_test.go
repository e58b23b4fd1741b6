package stripeinbox_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stripe/stripe-go/v82"

	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
	"github.com/exactlyonce/idempotency/pgxstore"
	"github.com/exactlyonce/idempotency/stripeinbox"
)

// TestCommitCut: when the database connection is cut at the COMMIT of an
// event's transaction, whether or not the COMMIT reached the server, the
// answer is 5xx (Stripe retries), and the retry is 200 with one payment:
// a replay where the COMMIT went through, a first run where it did not.
func TestCommitCut(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := testdb.Backend{Name: "pgx", Driver: "pgx", Kind: "postgres"}.DSN(t)
	target, err := scratch.Addr("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := faultproxy.Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	proxied, err := scratch.Rehost("postgres", dsn, proxy.Addr())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(proxied)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // one warm connection: the message after fn's INSERT is the save and COMMIT
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := pgxstore.Up(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE payments (event text NOT NULL, amount integer NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	store, err := pgxstore.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	in, err := inbox.New(store)
	if err != nil {
		t.Fatal(err)
	}
	var arm atomic.Int32 // a faultproxy.Mode to arm once fn has written, or Pass
	h, err := stripeinbox.Handler(in, []string{secret}, func(ctx context.Context, tx pgx.Tx, ev stripe.Event) error {
		if _, err := tx.Exec(ctx, `INSERT INTO payments (event, amount) VALUES ($1, 1)`, ev.ID); err != nil {
			return err
		}
		if m := faultproxy.Mode(arm.Swap(int32(faultproxy.Pass))); m != faultproxy.Pass {
			proxy.Arm(m) // the next message is the pipeline that saves the key and commits
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	s := &server{Server: srv}
	count := func(event string) int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT COUNT(*) FROM payments WHERE event = $1`, event).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Warm the connection: a cold one prepares the save in a round trip
	// of its own, which would be cut instead.
	warm := event("evt_warm")
	if code, err := s.post(t, warm, signed(warm, secret, time.Now())); err != nil || code != http.StatusOK {
		t.Fatalf("warm-up: %d %v", code, err)
	}
	for _, c := range []struct {
		event string
		mode  faultproxy.Mode
	}{{"evt_after", faultproxy.CutAfterNext}, {"evt_before", faultproxy.CutBeforeNext}} {
		body := event(c.event)
		cuts := proxy.Cuts()
		arm.Store(int32(c.mode))
		code, err := s.post(t, body, signed(body, secret, time.Now()))
		if err != nil || code < 500 {
			t.Fatalf("%s: %d %v, want 5xx", c.event, code, err)
		}
		if proxy.Cuts() != cuts+1 {
			t.Fatalf("%s: the proxy cut %d connections, want 1", c.event, proxy.Cuts()-cuts)
		}
		if code, err := s.post(t, body, signed(body, secret, time.Now())); err != nil || code != http.StatusOK {
			t.Fatalf("%s: retry %d %v, want 200", c.event, code, err)
		}
		if n := count(c.event); n != 1 {
			t.Fatalf("%s: %d payments, want 1", c.event, n)
		}
	}
}
