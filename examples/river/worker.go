package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/riverqueue/river"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/httpadapter"
)

// stepCollect names the provider call among the calls one request may make
// (a receipt email would be another step, with another key).
const stepCollect = "collect"

// CollectWorker works CollectArgs jobs: it asks the provider to collect the
// charge.
type CollectWorker struct {
	river.WorkerDefaults[CollectArgs]
	Provider string       // the provider's base URL
	Client   *http.Client // providerClient()
}

// Collected is what the provider answered, recorded as the job's output
// (river.RecordOutput) when River marks the job done.
type Collected struct {
	ProviderID string `json:"provider_id"` // the provider's charge
	Replayed   bool   `json:"replayed"`    // the provider had seen the key: an earlier run had made the charge
}

// Work calls the provider. A job may run more than once: River runs it
// again when its worker died after the call and before River marked the
// job done, or when the call failed. Every run sends the same
// Idempotency-Key, derived from the call that inserted the job, so the
// provider, which honours it, charges once.
func (w *CollectWorker) Work(ctx context.Context, job *river.Job[CollectArgs]) error {
	a := job.Args
	body, err := json.Marshal(ProviderRequest{Reference: a.ChargeID, Amount: a.Amount, Currency: a.Currency})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.Provider+"/v1/charges", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(httpadapter.KeyHeader, idempotency.DownstreamKey(a.Customer, a.Key, stepCollect))
	resp, err := w.Client.Do(req)
	if err != nil {
		return fmt.Errorf("provider: %w", err) // River runs the job again later, with the same key
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK, resp.StatusCode == http.StatusCreated:
	case resp.StatusCode == http.StatusConflict, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		return fmt.Errorf("provider: %s", resp.Status) // the Transport's retries ran out; River's go on
	default:
		// A definite answer, such as a declined card: running the job again
		// cannot change it. (A real service would record it on the charge.)
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return river.JobCancel(fmt.Errorf("provider refused charge %s: %s: %s", a.ChargeID, resp.Status, bytes.TrimSpace(msg)))
	}
	var pc ProviderCharge
	if err := json.NewDecoder(resp.Body).Decode(&pc); err != nil {
		return fmt.Errorf("provider's answer: %w", err)
	}
	return river.RecordOutput(ctx, Collected{ProviderID: pc.ID, Replayed: resp.Header.Get(httpadapter.ReplayedHeader) == "true"})
}

// providerClient returns the client the worker calls the provider with:
// httpadapter.Transport retries network errors, 409, 429 and 5xx with the
// same key, with backoff and jitter, honouring Retry-After. When its
// attempts run out, the job fails and River retries it later, still with
// the same key.
func providerClient() *http.Client {
	return &http.Client{Transport: &httpadapter.Transport{MaxAttempts: 3}}
}
