package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/httpadapter"
)

// ProviderRequest is what the worker posts to the provider.
type ProviderRequest struct {
	Reference string `json:"reference"` // our charge id
	Amount    int64  `json:"amount"`
	Currency  string `json:"currency"`
}

// ProviderCharge is the provider's answer: its charge.
type ProviderCharge struct {
	ID        string `json:"id"`
	Reference string `json:"reference"`
	Amount    int64  `json:"amount"`
}

// declineAbove is the amount (in cents) above which the fake provider
// declines a card.
const declineAbove = 1_000_00

// provider is a fake payment provider that honours Idempotency-Key as a
// real one must for a retried job to charge once:
//
//   - it stores each key with the request and its first answer, in the
//     same step as the charge (here one lock; a real provider uses its
//     database's transaction);
//   - a repeat of the request gets that answer again, with
//     Idempotent-Replayed: true, and charges nothing; a declined card stays
//     declined;
//   - the same key with another request gets 422, never a charge;
//   - it keeps a key for at least as long as the job may be retried.
type provider struct {
	mu   sync.Mutex
	keys map[string]*providerKey
	log  io.Writer // a line per request; nil for none
}

// providerKey is what the provider keeps for one Idempotency-Key.
type providerKey struct {
	request  []byte // the first request's body
	status   int
	answer   []byte
	requests int
}

func newProvider(log io.Writer) *provider {
	return &provider{keys: map[string]*providerKey{}, log: log}
}

func (p *provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get(httpadapter.KeyHeader)
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var req ProviderRequest
	if r.Method != http.MethodPost || r.URL.Path != "/v1/charges" || key == "" || err != nil ||
		json.Unmarshal(body, &req) != nil || req.Amount <= 0 {
		http.Error(w, "want POST /v1/charges with an Idempotency-Key and a JSON body", http.StatusBadRequest)
		return
	}

	p.mu.Lock()
	k, seen := p.keys[key]
	switch {
	case !seen:
		k = &providerKey{request: body}
		if req.Amount > declineAbove {
			k.status, k.answer = http.StatusPaymentRequired, []byte(`{"error":"card_declined"}`)
		} else {
			c := ProviderCharge{ID: exampledb.NewID("py_"), Reference: req.Reference, Amount: req.Amount} // the money moves here
			k.status = http.StatusCreated
			k.answer, _ = json.Marshal(c)
		}
		p.keys[key] = k
	case !bytes.Equal(k.request, body):
		k.requests++
		p.mu.Unlock()
		p.logf("provider: key %.8s… with another request: 422", key)
		http.Error(w, "this Idempotency-Key was used with another request", http.StatusUnprocessableEntity)
		return
	}
	k.requests++
	status, answer := k.status, k.answer
	p.mu.Unlock()

	switch {
	case seen:
		p.logf("provider: key %.8s… seen before (charge %s): replayed its answer, %d", key, req.Reference, status)
		w.Header().Set(httpadapter.ReplayedHeader, "true")
	case status == http.StatusCreated:
		p.logf("provider: key %.8s… new (charge %s): charged %d.%02d %s", key, req.Reference, req.Amount/100, req.Amount%100, req.Currency)
	default:
		p.logf("provider: key %.8s… new (charge %s): card declined", key, req.Reference)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(answer)
}

func (p *provider) logf(format string, args ...any) {
	if p.log != nil {
		fmt.Fprintf(p.log, "   "+format+"\n", args...)
	}
}

// providerKeyStats is what the provider did for one key.
type providerKeyStats struct {
	Requests int    // requests with the key
	ChargeID string // the charge the key made, if it made one (one at most, by construction)
}

// stats returns what the provider did, by Idempotency-Key, and how many
// charges it made in all.
func (p *provider) stats() (byKey map[string]providerKeyStats, charges int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	byKey = make(map[string]providerKeyStats, len(p.keys))
	for key, k := range p.keys {
		s := providerKeyStats{Requests: k.requests}
		if k.status == http.StatusCreated { // the first request made a charge
			var c ProviderCharge
			_ = json.Unmarshal(k.answer, &c)
			s.ChargeID = c.ID
			charges++
		}
		byKey[key] = s
	}
	return byKey, charges
}
