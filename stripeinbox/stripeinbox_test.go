package stripeinbox_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jmoiron/sqlx"
	"github.com/stripe/stripe-go/v82"
	"github.com/stripe/stripe-go/v82/webhook"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/pgxstore"
	"github.com/exactlyonce/idempotency/stripeinbox"
)

const secret = "whsec_test_secret"

func event(id string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"object":"event","type":"charge.succeeded","api_version":%q,"data":{"object":{"id":"ch_1","object":"charge","amount":500}}}`, id, stripe.APIVersion)
}

func signed(body []byte, secret string, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: at}).Header
}

// server runs the Stripe handler on a store behind a real HTTP server;
// dropNext makes the next answer get lost after the handler ran (the
// connection is cut, as when a proxy times out).
type server struct {
	*httptest.Server
	runs     atomic.Int32
	dropNext atomic.Bool
	count    func(t *testing.T, query string) int
}

// store is a store with the payments table, and how to write and count.
type store[TTx any] struct {
	s      *idempotency.TxStore[TTx]
	insert func(ctx context.Context, tx TTx, event string, amount int) error
	count  func(t *testing.T, query string) int
}

func pgxStore(t *testing.T) store[pgx.Tx] {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.Backend{Name: "pgx", Driver: "pgx", Kind: "postgres"}.DSN(t))
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
	s, err := pgxstore.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	return store[pgx.Tx]{
		s: s,
		insert: func(ctx context.Context, tx pgx.Tx, event string, amount int) error {
			_, err := tx.Exec(ctx, `INSERT INTO payments (event, amount) VALUES ($1, $2)`, event, amount)
			return err
		},
		count: func(t *testing.T, query string) int {
			var n int
			if err := pool.QueryRow(context.Background(), query).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		},
	}
}

func sqlxStore(t *testing.T, b testdb.Backend) store[*sqlx.Tx] {
	t.Helper()
	db := b.Open(t)
	db.MustExec(`CREATE TABLE payments (event VARCHAR(255) NOT NULL, amount INTEGER NOT NULL)`)
	s, err := idempotency.New(db)
	if err != nil {
		t.Fatal(err)
	}
	return store[*sqlx.Tx]{
		s: s,
		insert: func(ctx context.Context, tx *sqlx.Tx, event string, amount int) error {
			_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO payments (event, amount) VALUES (?, ?)`), event, amount)
			return err
		},
		count: func(t *testing.T, query string) int {
			var n int
			if err := db.Get(&n, query); err != nil {
				t.Fatal(err)
			}
			return n
		},
	}
}

func newServer[TTx any](t *testing.T, st store[TTx]) *server {
	t.Helper()
	in, err := inbox.New(st.s)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{count: st.count}
	h, err := stripeinbox.Handler(in, []string{"whsec_old", secret}, func(ctx context.Context, tx TTx, ev stripe.Event) error {
		s.runs.Add(1)
		time.Sleep(50 * time.Millisecond) // long enough for a concurrent twin to meet this one
		return st.insert(ctx, tx, ev.ID, int(ev.Data.Object["amount"].(float64)))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.dropNext.CompareAndSwap(true, false) {
			h.ServeHTTP(httptest.NewRecorder(), r) // runs and commits; the answer is lost
			panic(http.ErrAbortHandler)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

// each runs test on the pgx store and on every database/sql backend but
// TiDB (the stores' protocol is the same; TiDB's is the conformance
// suite's).
func each(t *testing.T, test func(t *testing.T, s *server)) {
	t.Run("pgx-native", func(t *testing.T) {
		t.Parallel()
		test(t, newServer(t, pgxStore(t)))
	})
	for _, b := range testdb.Backends() {
		if b.Server == "tidb" {
			continue
		}
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			test(t, newServer(t, sqlxStore(t, b)))
		})
	}
}

func (s *server) post(t *testing.T, body []byte, sig string) (int, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.URL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if sig != "" {
		req.Header.Set("Stripe-Signature", sig)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// TestOneEffect: an event delivered, redelivered after its answer was
// lost, and delivered twice at once is applied once, and every delivery
// that got an answer got 200.
func TestOneEffect(t *testing.T) {
	t.Parallel()
	each(t, testOneEffect)
}

func testOneEffect(t *testing.T, s *server) {
	body := event("evt_1")

	s.dropNext.Store(true)
	if _, err := s.post(t, body, signed(body, secret, time.Now())); err == nil {
		t.Fatal("the dropped answer arrived")
	}
	if code, err := s.post(t, body, signed(body, secret, time.Now())); err != nil || code != http.StatusOK {
		t.Fatalf("redelivery: %d %v, want 200", code, err)
	}

	twin := event("evt_2")
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range codes {
		wg.Go(func() {
			code, err := s.post(t, twin, signed(twin, secret, time.Now()))
			if err != nil {
				t.Error(err)
			}
			codes[i] = code
		})
	}
	wg.Wait()
	if codes[0] != http.StatusOK || codes[1] != http.StatusOK {
		t.Fatalf("concurrent deliveries: %v, want 200 twice", codes)
	}
	if n := s.count(t, `SELECT COUNT(*) FROM payments`); n != 2 || s.runs.Load() != 2 {
		t.Fatalf("%d payments from %d runs, want 2 from 2", n, s.runs.Load())
	}
}

// TestRefused: a bad signature, a stale or future timestamp, a body
// changed after signing, and a missing header are 400 and write nothing,
// not even a key.
func TestRefused(t *testing.T) {
	t.Parallel()
	each(t, testRefused)
}

func testRefused(t *testing.T, s *server) {
	body := event("evt_3")
	for _, c := range []struct {
		name string
		body []byte
		sig  string
	}{
		{"another secret", body, signed(body, "whsec_other", time.Now())},
		{"stale", body, signed(body, secret, time.Now().Add(-10*time.Minute))},
		{"future", body, signed(body, secret, time.Now().Add(10*time.Minute))},
		{"body changed after signing", event("evt_4"), signed(body, secret, time.Now())},
		{"no header", body, ""},
		{"malformed header", body, "t=abc,v1=zz"},
	} {
		if code, err := s.post(t, c.body, c.sig); err != nil || code != http.StatusBadRequest {
			t.Errorf("%s: %d %v, want 400", c.name, code, err)
		}
	}
	if n := s.count(t, `SELECT COUNT(*) FROM payments`) + s.count(t, `SELECT COUNT(*) FROM idempotency_keys`); n != 0 || s.runs.Load() != 0 {
		t.Fatalf("refused webhooks: %d rows, %d runs; want none", n, s.runs.Load())
	}
	// The old secret, while it is rolled, still verifies.
	if code, err := s.post(t, body, signed(body, "whsec_old", time.Now())); err != nil || code != http.StatusOK {
		t.Fatalf("old secret: %d %v, want 200", code, err)
	}
}

func TestVerifierConfig(t *testing.T) {
	t.Parallel()
	for name, secrets := range map[string][]string{"none": nil, "empty": {""}} {
		if _, err := stripeinbox.Verifier(secrets, 0); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := stripeinbox.Verifier([]string{secret}, -time.Second); err == nil {
		t.Error("negative tolerance: no error")
	}
}
