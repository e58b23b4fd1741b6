// Command outbox shows how an idempotent request calls another system (here
// a payment provider) exactly once in effect, even though a rollback cannot
// undo an HTTP call and a process can die at any moment.
//
// The rule: fn never calls the provider. It writes the charge row and an
// outbox row in the same transaction as the key, so the message exists if and
// only if the charge does. After the commit, a relay sends each unsent outbox
// row to the provider with the row's id as its Idempotency-Key and then marks
// the row sent. If the relay dies between the send and the mark, the next
// pass sends the row again with the same key, and the provider, which
// dedupes on that key, answers with the charge it already made.
//
// On Postgres and SQLite, examples/river does the same with River, a job
// queue in the application's database, instead of a relay of one's own.
// This outbox stays for MySQL and MariaDB, where River does not run.
//
//	go run ./examples/outbox
//	go run ./examples/outbox -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/migrations"
)

func main() { exampledb.Main("outbox", run) }

// The business tables: charges, and the outbox of messages to send once the
// transaction that wrote them has committed.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS charges (
		id       VARCHAR(40) PRIMARY KEY,
		customer VARCHAR(40) NOT NULL,
		amount   BIGINT      NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS outbox (
		id           VARCHAR(40) PRIMARY KEY,
		customer     VARCHAR(40) NOT NULL,
		payload      TEXT        NOT NULL,
		sent_at      TIMESTAMP   NULL,
		provider_ref VARCHAR(40) NULL
	)`,
}

// ChargeRequest is what the client sends with its idempotency key.
type ChargeRequest struct {
	Order  string `json:"order"`
	Amount int64  `json:"amount"` // in cents
}

// Charge is the answer to the client: our charge, and the outbox message
// that will ask the provider to collect it.
type Charge struct {
	ID       string `json:"id"`
	OutboxID string `json:"outbox_id"`
}

// ProviderCharge is the message the relay sends to the provider.
type ProviderCharge struct {
	ChargeID string `json:"charge_id"`
	Order    string `json:"order"`
	Amount   int64  `json:"amount"`
}

func run(ctx context.Context, w io.Writer, db *sqlx.DB) error {
	if err := migrations.Up(ctx, db); err != nil {
		return err
	}
	for _, ddl := range schema {
		if _, err := db.ExecContext(ctx, ddl); err != nil {
			return fmt.Errorf("create tables: %w", err)
		}
	}
	store, err := idempotency.New(db)
	if err != nil {
		return err
	}
	customer := exampledb.NewID("cus_")
	s := store.Scope(customer)

	p := &provider{charges: map[string]string{}}
	srv := httptest.NewServer(p)
	defer srv.Close()
	fmt.Fprintf(w, "Customer %s on %s; a fake payment provider dedupes on Idempotency-Key.\n", customer, db.DriverName())

	var calls atomic.Int64
	charge := func(key string, req ChargeRequest) (idempotency.Result[Charge], error) {
		return idempotency.Run(ctx, s, key, req, func(ctx context.Context, tx *sqlx.Tx) (Charge, error) {
			calls.Add(1)
			// No HTTP call here: a rollback (or a retry of this attempt after a
			// deadlock) could not take it back. Write the message instead; it
			// commits with the charge and the key, or not at all.
			c := Charge{ID: exampledb.NewID("ch_"), OutboxID: newOutboxID()}
			payload, err := json.Marshal(ProviderCharge{ChargeID: c.ID, Order: req.Order, Amount: req.Amount})
			if err != nil {
				return Charge{}, err
			}
			if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO charges (id, customer, amount) VALUES (?, ?, ?)`),
				c.ID, customer, req.Amount); err != nil {
				return Charge{}, err
			}
			if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO outbox (id, customer, payload) VALUES (?, ?, ?)`),
				c.OutboxID, customer, string(payload)); err != nil {
				return Charge{}, err
			}
			return c, nil
		})
	}

	first, err := charge("order-1", ChargeRequest{Order: "order-1", Amount: 10_00})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "1. order-1: one transaction wrote charge %s, outbox row %s and the key\n", first.Value.ID, first.Value.OutboxID)
	again, err := charge("order-1", ChargeRequest{Order: "order-1", Amount: 10_00})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "2. client retries order-1: replayed=%t, same outbox row %s, fn ran %d time so far\n",
		again.Replayed, again.Value.OutboxID, calls.Load())
	second, err := charge("order-2", ChargeRequest{Order: "order-2", Amount: 25_00})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "3. order-2: charge %s, outbox row %s\n", second.Value.ID, second.Value.OutboxID)

	r := &relay{db: db, client: &http.Client{Timeout: 10 * time.Second}, url: srv.URL + "/charges", w: w}
	r.crash = func(string) bool { r.crash = nil; return true } // once
	fmt.Fprintln(w, "4. relay pass 1 sends each row with Idempotency-Key = its id, and dies after one send:")
	if err := r.pass(ctx); !errors.Is(err, errCrash) {
		return fmt.Errorf("relay pass 1: want the simulated crash, got %v", err)
	}
	fmt.Fprintln(w, "5. relay pass 2, after a restart, sends every row not marked sent:")
	if err := r.pass(ctx); err != nil {
		return fmt.Errorf("relay pass 2: %w", err)
	}

	var unsent, rows int
	if err := db.GetContext(ctx, &rows, db.Rebind(`SELECT COUNT(*) FROM outbox WHERE customer = ?`), customer); err != nil {
		return err
	}
	if err := db.GetContext(ctx, &unsent, db.Rebind(`SELECT COUNT(*) FROM outbox WHERE customer = ? AND sent_at IS NULL`), customer); err != nil {
		return err
	}
	requests, made := p.stats()
	fmt.Fprintf(w, "6. provider got %d requests and made %d charges; outbox: %d rows, %d unsent. One charge per order.\n",
		requests, made, rows, unsent)
	if made != 2 || rows != 2 || unsent != 0 {
		return fmt.Errorf("want 2 provider charges and 2 sent outbox rows, got %d charges, %d rows, %d unsent", made, rows, unsent)
	}
	return nil
}

// errCrash stands for the relay process dying.
var errCrash = errors.New("simulated crash")

// relay sends unsent outbox rows to the provider. Run one on every instance
// if you like: two relays may send a row twice, but under the same key, so
// the provider charges once. (On Postgres and MySQL 8, SELECT ... FOR UPDATE
// SKIP LOCKED in a transaction spreads the rows between them.)
type relay struct {
	db     *sqlx.DB
	client *http.Client
	url    string
	w      io.Writer
	// crash, when set, is asked after each send whether to die (errCrash)
	// before marking the row sent: the worst moment for a process to die.
	crash func(id string) bool
}

// pass sends every unsent row once, oldest first (ids are time-ordered).
func (r *relay) pass(ctx context.Context) error {
	var rows []struct {
		ID      string `db:"id"`
		Payload string `db:"payload"`
	}
	if err := r.db.SelectContext(ctx, &rows, `SELECT id, payload FROM outbox WHERE sent_at IS NULL ORDER BY id`); err != nil {
		return err
	}
	for _, row := range rows {
		// The outbox row's id is the key: stable across re-sends of this
		// message, and different for every message.
		ref, replayed, err := r.send(ctx, row.ID, []byte(row.Payload))
		if err != nil {
			return err // the row stays unsent; the next pass tries again
		}
		var msg ProviderCharge
		_ = json.Unmarshal([]byte(row.Payload), &msg)
		how := "provider made charge " + ref
		if replayed {
			how = "same key, so the provider replayed charge " + ref
		}
		fmt.Fprintf(r.w, "   sent %s (%s): %s\n", row.ID, msg.Order, how)
		if r.crash != nil && r.crash(row.ID) {
			fmt.Fprintf(r.w, "   crash before marking %s sent\n", row.ID)
			return errCrash
		}
		if _, err := r.db.ExecContext(ctx, r.db.Rebind(
			`UPDATE outbox SET sent_at = CURRENT_TIMESTAMP, provider_ref = ? WHERE id = ?`), ref, row.ID); err != nil {
			return err
		}
	}
	return nil
}

// send posts one message and returns the provider's charge id, and whether
// the provider replayed an earlier answer.
func (r *relay) send(ctx context.Context, key string, body []byte) (ref string, replayed bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return "", false, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := r.client.Do(req)
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", false, fmt.Errorf("provider: %s", resp.Status)
	}
	var out struct {
		ID string `json:"id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", false, fmt.Errorf("provider: %w", err)
	}
	return out.ID, resp.Header.Get("Idempotent-Replayed") == "true", nil
}

// provider is a fake payment provider that behaves as real ones do: a
// request whose Idempotency-Key it has seen gets the first answer again.
type provider struct {
	mu       sync.Mutex
	requests int
	charges  map[string]string // Idempotency-Key → provider charge id
}

func (p *provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	var msg ProviderCharge
	if r.Method != http.MethodPost || key == "" || json.NewDecoder(r.Body).Decode(&msg) != nil {
		http.Error(w, "want a POST with an Idempotency-Key and a JSON body", http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	p.requests++
	id, seen := p.charges[key]
	if !seen {
		id = exampledb.NewID("py_") // the money moves here, once per key
		p.charges[key] = id
	}
	p.mu.Unlock()
	if seen {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"id": id})
}

// stats returns how many requests the provider got and how many charges it
// made.
func (p *provider) stats() (requests, charges int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests, len(p.charges)
}

// newOutboxID returns a time-ordered id such as ob_18eaae881f5aa237c0de:
// sorting by id sorts by creation, so the relay sends messages in order.
func newOutboxID() string {
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return fmt.Sprintf("ob_%016x%s", time.Now().UnixNano(), hex.EncodeToString(b))
}
