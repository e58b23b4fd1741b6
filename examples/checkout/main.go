// Command checkout shows a flow (idempotency.NewFlow): an HTTP checkout
// that records an order, authorizes the amount with a payment provider, and
// answers with the provider's result, 201 with the charge or 402 declined,
// exactly once per Idempotency-Key, even when the provider fails, the
// client retries, or the client gives up and the completer finishes.
//
// The provider is a fake that honours keys: it stores each key with its
// first answer and gives that answer to a repeat, and can be told to fail.
// It counts what it charged per key, so the program can show that every
// key was charged once.
//
// It needs no server: by default it runs on an embedded SQLite database in a
// temporary file. Point it at a server with -driver and -dsn:
//
//	go run ./examples/checkout
//	go run ./examples/checkout -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
//	go run ./examples/checkout -driver mysql -dsn 'root@tcp(127.0.0.1:3306)/test'
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/httpadapter"
	"github.com/exactlyonce/idempotency/migrations"
)

func main() { exampledb.Main("checkout", run) }

// The business table: one row per order, written by the flow's steps.
const schema = `CREATE TABLE IF NOT EXISTS orders (
	id        VARCHAR(40)  PRIMARY KEY,
	customer  VARCHAR(40)  NOT NULL,
	amount    BIGINT       NOT NULL,
	status    VARCHAR(20)  NOT NULL,
	charge_id VARCHAR(64)
)`

// CheckoutRequest is what the client posts.
type CheckoutRequest struct {
	Amount int64 `json:"amount"` // in cents
}

// Receipt is the 201 answer.
type Receipt struct {
	Order  string `json:"order"`
	Charge string `json:"charge"`
	Amount int64  `json:"amount"`
}

// Authorization is the provider's answer: a decline is an answer too, so
// it is recorded, and a resumed flow never asks again.
type Authorization struct {
	ID       string `json:"id,omitempty"`
	Approved bool   `json:"approved"`
}

// newCheckout returns the flow: a step that records the order, a call to
// the provider with a key the flow derives (the same on every run), and a
// step that records the outcome.
func newCheckout(p *provider) *idempotency.Flow[CheckoutRequest, Receipt, *sqlx.Tx] {
	return idempotency.NewFlow("checkout", func(ctx context.Context, s *idempotency.Steps[*sqlx.Tx], req CheckoutRequest) (Receipt, error) {
		order, err := idempotency.Step(s, "order", func(ctx context.Context, tx *sqlx.Tx) (string, error) {
			id := exampledb.NewID("ord_")
			_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO orders (id, customer, amount, status) VALUES (?, ?, ?, 'pending')`),
				id, s.Scope(), req.Amount)
			return id, err
		})
		if err != nil {
			return Receipt{}, err
		}
		auth, err := idempotency.Call(s, "authorize", func(ctx context.Context, key string) (Authorization, error) {
			return p.authorize(ctx, key, req.Amount)
		})
		if err != nil {
			return Receipt{}, err // the flow stops here, resumable
		}
		status := "declined"
		if auth.Approved {
			status = "authorized"
		}
		if _, err := idempotency.Step(s, "outcome", func(ctx context.Context, tx *sqlx.Tx) (bool, error) {
			_, err := tx.ExecContext(ctx, tx.Rebind(`UPDATE orders SET status = ?, charge_id = ? WHERE id = ?`), status, auth.ID, order)
			return true, err
		}); err != nil {
			return Receipt{}, err
		}
		if !auth.Approved {
			// Final: stored under the key and replayed, so a retry gets
			// 402 again instead of a new attempt.
			return Receipt{}, idempotency.FinalCode("card_declined", errors.New("the card was declined"))
		}
		return Receipt{Order: order, Charge: auth.ID, Amount: req.Amount}, nil
	})
}

// handler answers POST /checkout with the flow, through the HTTP adapter:
// the Idempotency-Key, the customer's scope, replays (Idempotent-Replayed)
// and the 409 and 422 problems are its; the two functions say how a
// request becomes the flow's params and how its value (or final failure)
// becomes the answer, the same way fresh or replayed.
func handler(store *idempotency.Store, checkout *idempotency.Flow[CheckoutRequest, Receipt, *sqlx.Tx]) http.Handler {
	decode := func(r *http.Request, body []byte) (CheckoutRequest, error) {
		var req CheckoutRequest
		err := json.Unmarshal(body, &req)
		return req, err
	}
	respond := func(w http.ResponseWriter, r *http.Request, receipt Receipt, err error) {
		var final *idempotency.FinalError
		if errors.As(err, &final) && final.Code == "card_declined" {
			http.Error(w, "card declined", http.StatusPaymentRequired)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(receipt)
	}
	return httpadapter.FlowHandler(store, checkout, decode, respond,
		httpadapter.WithScope(func(r *http.Request) string { return r.Header.Get("Customer") })) // stands for the authenticated account
}

func run(ctx context.Context, w io.Writer, db *sqlx.DB) error {
	if err := migrations.Up(ctx, db); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("create orders: %w", err)
	}
	// The Flow hook sees each flow's events; here it tells step 6 when the
	// completer has stored pay-4's answer.
	finished := make(chan string, 16)
	hooks := idempotency.Hooks{Flow: func(_ context.Context, e idempotency.FlowEvent) {
		if e.Kind == idempotency.FlowFinished {
			select {
			case finished <- e.Key:
			default: // hooks must not block
			}
		}
	}}
	store, err := idempotency.New(db, idempotency.WithLease(2*time.Second),
		idempotency.WithCompleterInterval(50*time.Millisecond), idempotency.WithHooks(hooks))
	if err != nil {
		return err
	}
	p := &provider{answers: map[string]Authorization{}, charged: map[string]int{}}
	checkout := newCheckout(p)
	srv := httptest.NewServer(handler(store, checkout))
	defer srv.Close()

	customer := exampledb.NewID("cus_")
	post := func(key string, amount int64) (int, string, bool, error) {
		body, _ := json.Marshal(CheckoutRequest{Amount: amount})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/checkout", bytes.NewReader(body))
		if err != nil {
			return 0, "", false, err
		}
		req.Header.Set("Idempotency-Key", key)
		req.Header.Set("Customer", customer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", false, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		text := strings.TrimSpace(string(b))
		if resp.Header.Get("Content-Type") == httpadapter.ProblemContentType {
			var p httpadapter.Problem
			if json.Unmarshal(b, &p) == nil {
				text = "problem " + strings.TrimPrefix(p.Type, httpadapter.ProblemTypeBase) + " (" + p.Title + ")"
			}
		}
		return resp.StatusCode, text, resp.Header.Get(httpadapter.ReplayedHeader) == "true", err
	}
	show := func(step, what string, status int, body string, replayed bool) {
		fmt.Fprintf(w, "%s %s: %d %s (replayed=%t)\n", step, what, status, body, replayed)
	}
	fmt.Fprintf(w, "Checkout for customer %s on %s; each request runs the flow checkout.\n", customer, db.DriverName())

	// 1. A new key: order, authorization, outcome; 201.
	status, body, replayed, err := post("pay-1", 25_00)
	if err != nil || status != http.StatusCreated {
		return fmt.Errorf("step 1: %d %s %v", status, body, err)
	}
	show("1.", "pay-1, $25", status, body, replayed)
	first := body

	// 2. The client retries: the stored answer, nothing runs.
	status, body, replayed, err = post("pay-1", 25_00)
	if err != nil || body != first || !replayed {
		return fmt.Errorf("step 2: want the first answer replayed, got %d %s %v", status, body, err)
	}
	show("2.", "retry pay-1", status, body, replayed)

	// 3. The provider is down for the first try: 503, the order step stays
	// recorded; the retry resumes after it and calls the provider with the
	// same key.
	p.failNext(1)
	status, body, _, err = post("pay-2", 40_00)
	if err != nil || status != http.StatusServiceUnavailable {
		return fmt.Errorf("step 3: want 503, got %d %s %v", status, body, err)
	}
	fmt.Fprintf(w, "3. pay-2, $40, provider down: %d %s\n", status, body)
	status, body, replayed, err = post("pay-2", 40_00)
	if err != nil || status != http.StatusCreated {
		return fmt.Errorf("step 3: want 201 on the retry, got %d %s %v", status, body, err)
	}
	show("  ", "retry pay-2", status, body, replayed)

	// 4. Declined: 402, stored as the key's answer.
	status, body, replayed, err = post("pay-3", 900_00)
	if err != nil || status != http.StatusPaymentRequired {
		return fmt.Errorf("step 4: want 402, got %d %s %v", status, body, err)
	}
	show("4.", "pay-3, $900", status, body, replayed)
	status, body, replayed, err = post("pay-3", 900_00)
	if err != nil || status != http.StatusPaymentRequired || !replayed {
		return fmt.Errorf("step 4: want 402 replayed, got %d %s %v", status, body, err)
	}
	show("  ", "retry pay-3", status, body, replayed)

	// 5. The same key with another amount: 422, nothing runs.
	status, body, _, err = post("pay-1", 30_00)
	if err != nil || status != http.StatusUnprocessableEntity {
		return fmt.Errorf("step 5: want 422, got %d %s %v", status, body, err)
	}
	fmt.Fprintf(w, "5. pay-1, $30: %d %s\n", status, body)

	// 6. The provider is down and the client never comes back: the
	// completer, which runs on every instance, finishes the flow with its
	// stored params and scope.
	p.failNext(1)
	status, body, _, err = post("pay-4", 15_00)
	if err != nil || status != http.StatusServiceUnavailable {
		return fmt.Errorf("step 6: want 503, got %d %s %v", status, body, err)
	}
	fmt.Fprintf(w, "6. pay-4, $15, provider down, the client gives up: %d\n", status)
	cctx, stop := context.WithCancel(ctx)
	completer := make(chan error, 1)
	go func() { completer <- idempotency.RunCompleter(cctx, store, checkout) }()
	err = waitFor(ctx, finished, "pay-4")
	stop()
	if cerr := <-completer; err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("step 6: %w", err)
	}
	status, body, replayed, err = post("pay-4", 15_00)
	if err != nil || status != http.StatusCreated || !replayed {
		return fmt.Errorf("step 6: want the completer's 201 replayed, got %d %s %v", status, body, err)
	}
	show("  ", "the completer finished it; a late retry of pay-4", status, body, replayed)

	// The proof, counted at the provider: one charge per key.
	fmt.Fprintf(w, "Provider charges per key: %s\n", p.summary())
	var orders []string
	if err := db.SelectContext(ctx, &orders, db.Rebind(`SELECT status FROM orders WHERE customer = ? ORDER BY amount`), customer); err != nil {
		return err
	}
	fmt.Fprintf(w, "Orders: %s\n", strings.Join(orders, ", "))
	return nil
}

// waitFor waits until the flow of key has finished, for up to 30s.
func waitFor(ctx context.Context, finished <-chan string, key string) error {
	timeout := time.After(30 * time.Second)
	for {
		select {
		case k := <-finished:
			if k == key {
				return nil
			}
		case <-timeout:
			return fmt.Errorf("the flow of %s did not finish in 30s", key)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// provider is a fake payment provider that honours idempotency keys: it
// stores each key with its first answer and replays it, approves amounts
// up to $500, and can be told to fail the next calls (a network error).
type provider struct {
	mu      sync.Mutex
	answers map[string]Authorization
	charged map[string]int // charges made, per key: the count that matters
	fail    int
}

func (p *provider) failNext(n int) {
	p.mu.Lock()
	p.fail = n
	p.mu.Unlock()
}

func (p *provider) authorize(ctx context.Context, key string, amount int64) (Authorization, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail > 0 {
		p.fail--
		return Authorization{}, errors.New("provider: connection reset")
	}
	if a, ok := p.answers[key]; ok {
		return a, nil
	}
	a := Authorization{Approved: amount <= 500_00}
	if a.Approved {
		a.ID = "ch_" + key[:8]
		p.charged[key]++
	}
	p.answers[key] = a
	return a, nil
}

// summary lists the charges per key, and says whether any key was charged
// twice.
func (p *provider) summary() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var parts []string
	twice := false
	for key, n := range p.charged {
		parts = append(parts, fmt.Sprintf("%s…=%d", key[:8], n))
		twice = twice || n > 1
	}
	sort.Strings(parts)
	verdict := "each key charged once"
	if twice {
		verdict = "A KEY WAS CHARGED TWICE"
	}
	return fmt.Sprintf("%d keys charged, %s (%s)", len(parts), verdict, strings.Join(parts, " "))
}
