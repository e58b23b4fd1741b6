package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"

	"github.com/riverqueue/river"

	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/httpadapter"
)

// schema is the business table. There is no unique key on (customer,
// idempotency_key), on purpose: the fault test counts the rows of each key,
// and a second row must show there rather than fail the insert.
const schema = `CREATE TABLE IF NOT EXISTS charges (
	id              VARCHAR(40)  PRIMARY KEY,
	customer        VARCHAR(255) NOT NULL,
	idempotency_key VARCHAR(255) NOT NULL,
	amount          BIGINT       NOT NULL,
	currency        VARCHAR(3)   NOT NULL
)`

// ChargeRequest is what a client posts to /v1/charges with its
// Idempotency-Key.
type ChargeRequest struct {
	Amount   int64  `json:"amount"` // in cents
	Currency string `json:"currency"`
}

// Charge is our record of a charge, and the API's answer.
type Charge struct {
	ID       string `json:"id"`
	Customer string `json:"customer"`
	Key      string `json:"idempotency_key"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
}

// CollectArgs is the River job that asks the provider to collect a charge.
// It carries the scope and the key of the call that inserted it, from which
// the worker derives the provider's Idempotency-Key.
type CollectArgs struct {
	Customer string `json:"customer"` // the scope of the key
	Key      string `json:"key"`      // the client's Idempotency-Key
	ChargeID string `json:"charge_id"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
}

// Kind implements river.JobArgs.
func (CollectArgs) Kind() string { return "collect_charge" }

// InsertOpts bounds the job's retries: River's default, 25 attempts, spans
// three weeks, longer than providers keep a key (Stripe: 24 hours), and a
// retry the provider no longer recognises would charge again. With 10
// attempts the last comes about 4 hours after the first.
func (CollectArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{MaxAttempts: 10} }

// customer stands in for authentication: the caller's account, which is
// also the scope of its idempotency keys.
func customer(r *http.Request) string {
	if c := r.Header.Get("X-Customer"); c != "" {
		return c
	}
	return "cus_demo"
}

// api returns the charges API: POST /v1/charges behind the idempotency
// middleware, which runs the handler as fn of idempotency.Run, in the key's
// transaction.
func (s *stack[STx, RTx]) api() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/charges", s.createCharge)
	return httpadapter.MiddlewareFor(s.store,
		httpadapter.WithScope(customer),
		httpadapter.WithKeyRequired(), // the job's provider key is derived from it
	)(mux)
}

// createCharge writes the charge and inserts the job that will collect it,
// both through the request's transaction. It never calls the provider: a
// rollback could not take the call back, and fn may run more than once.
func (s *stack[STx, RTx]) createCharge(w http.ResponseWriter, r *http.Request) {
	var req ChargeRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Amount <= 0 || len(req.Currency) != 3 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": `want {"amount": a positive integer, "currency": a 3-letter code}`})
		return
	}
	key, err := httpadapter.ParseKey(r.Header.Get(httpadapter.KeyHeader)) // the middleware has checked it
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	ctx := r.Context()
	c := Charge{ID: exampledb.NewID("ch_"), Customer: customer(r), Key: key, Amount: req.Amount, Currency: req.Currency}

	// The key's transaction: both writes commit with the key and the stored
	// answer, or not at all.
	if err := s.charge(ctx, httpadapter.TxFrom[STx](ctx), c); err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "could not save the charge"})
		return // a 5xx rolls back: no charge, no job, no key
	}
	w.Header().Set("Location", "/v1/charges/"+c.ID)
	writeJSON(w, http.StatusCreated, c)
}

// charge writes c and inserts the job that will collect it, both through
// tx, fn's transaction: the job exists if and only if the charge and the
// key commit, so one committed call inserts one job.
func (s *stack[STx, RTx]) charge(ctx context.Context, tx STx, c Charge) error {
	if err := s.insertCharge(ctx, tx, c); err != nil {
		return err
	}
	_, err := s.client.InsertTx(ctx, s.riverTx(tx), CollectArgs{
		Customer: c.Customer, Key: c.Key, ChargeID: c.ID, Amount: c.Amount, Currency: c.Currency,
	}, nil)
	return err
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// postCharge is a client of the charges API at base: it posts req for
// customer with key, and returns the answer (its body closed) and, when it
// is a 201, the charge it holds.
func postCharge(ctx context.Context, client *http.Client, base, customer, key string, req ChargeRequest) (*http.Response, Charge, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, Charge{}, err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/charges", bytes.NewReader(body))
	if err != nil {
		return nil, Charge{}, err
	}
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-Customer", customer)
	r.Header.Set(httpadapter.KeyHeader, key)
	resp, err := client.Do(r)
	if err != nil {
		return nil, Charge{}, err
	}
	defer resp.Body.Close()
	var c Charge
	if resp.StatusCode == http.StatusCreated {
		err = json.NewDecoder(resp.Body).Decode(&c)
	}
	return resp, c, err
}
