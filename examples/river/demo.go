package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/httpadapter"
)

// demo runs the API, a worker and the fake provider in this process and
// tells what happens, on a database a has migrated.
func demo(ctx context.Context, w io.Writer, a app, driver string) error {
	w = &lockedWriter{w: w} // the provider writes too, from its own goroutines
	p := newProvider(w)
	prov := httptest.NewServer(p)
	defer prov.Close()
	api := httptest.NewServer(a.api())
	defer api.Close()
	cus := exampledb.NewID("cus_")
	fmt.Fprintf(w, "Customer %s on %s. The API writes each charge and a River job in one transaction;\n"+
		"a worker asks a fake provider, which honours Idempotency-Key, to collect it.\n", cus, driver)

	post := func(key string, req ChargeRequest) (status int, replayed bool, c Charge, err error) {
		resp, c, err := postCharge(ctx, http.DefaultClient, api.URL, cus, key, req)
		if err != nil {
			return 0, false, Charge{}, err
		}
		return resp.StatusCode, resp.Header.Get(httpadapter.ReplayedHeader) == "true", c, nil
	}
	// jobs returns this customer's jobs, oldest first.
	jobs := func() ([]*rivertype.JobRow, error) {
		all, err := a.jobs(ctx)
		var mine []*rivertype.JobRow
		for _, j := range all {
			if args(j).Customer == cus {
				mine = append(mine, j)
			}
		}
		return mine, err
	}

	status, _, first, err := post("order-1", ChargeRequest{Amount: 10_00, Currency: "EUR"})
	if err != nil || status != http.StatusCreated {
		return fmt.Errorf("step 1: %d, %v", status, err)
	}
	js, err := jobs()
	if err != nil || len(js) != 1 {
		return fmt.Errorf("step 1: want 1 job, got %d (%v)", len(js), err)
	}
	fmt.Fprintf(w, "1. POST /v1/charges, key order-1, 10.00 EUR: %d, charge %s; the same transaction inserted job %d (%s)\n",
		status, first.ID, js[0].ID, js[0].State)

	status, replayed, again, err := post("order-1", ChargeRequest{Amount: 10_00, Currency: "EUR"})
	if err != nil || status != http.StatusCreated || !replayed || again != first {
		return fmt.Errorf("step 2: want a replay of %+v, got %d %t %+v (%v)", first, status, replayed, again, err)
	}
	js, err = jobs()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "2. the client retries order-1: %d, replayed=%t, same charge %s; jobs: %d\n", status, replayed, again.ID, len(js))

	status, _, _, err = post("order-1", ChargeRequest{Amount: 20_00, Currency: "EUR"})
	if err != nil || status != http.StatusUnprocessableEntity {
		return fmt.Errorf("step 3: want 422, got %d (%v)", status, err)
	}
	js, err = jobs()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "3. key order-1 with 20.00 EUR: %d (same key, other request), nothing written; jobs: %d\n", status, len(js))

	for _, c := range []struct {
		key    string
		amount int64
	}{{"order-2", 25_00}, {"order-3", 2_000_00}} {
		if status, _, _, err = post(c.key, ChargeRequest{Amount: c.amount, Currency: "EUR"}); err != nil || status != http.StatusCreated {
			return fmt.Errorf("%s: %d, %v", c.key, status, err)
		}
	}
	js, err = jobs()
	if err != nil || len(js) != 3 {
		return fmt.Errorf("step 4: want 3 jobs, got %d (%v)", len(js), err)
	}
	fmt.Fprintf(w, "4. order-2 (25.00 EUR) and order-3 (2000.00 EUR, which the provider will decline): jobs: %d\n", len(js))

	fmt.Fprintln(w, "5. a worker starts. The first run of each job fails after the provider answered, as if the\n"+
		"   worker had died before River marked the job done; River runs the job again, with the same key:")
	wk, err := a.startWorker(ctx, workerConfig{
		Provider:    prov.URL,
		MaxWorkers:  1, // one job at a time, so the story reads in order
		JobTimeout:  30 * time.Second,
		RescueAfter: time.Minute,
		Logger:      slog.New(slog.DiscardHandler),
		Middleware:  []rivertype.Middleware{&failFirstRun{}},
		Events:      true,
	})
	if err != nil {
		return err
	}
	defer func() {
		stop, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = wk.stop(stop)
	}()
	for done := 0; done < len(js); {
		var ev *river.Event
		select {
		case ev = <-wk.events:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the jobs: %w", ctx.Err())
		}
		if args(ev.Job).Customer != cus {
			continue // another run's job, on a shared database
		}
		fmt.Fprintf(w, "   job %d (%s), run %d: %s\n", ev.Job.ID, args(ev.Job).Key, ev.Job.Attempt, outcome(ev.Job))
		if ev.Job.State == rivertype.JobStateCompleted || ev.Job.State == rivertype.JobStateCancelled {
			done++
		}
	}

	byKey, charges := p.stats()
	requests := 0
	for _, k := range byKey {
		requests += k.Requests
	}
	fmt.Fprintf(w, "6. the provider got %d requests with %d keys and made %d charges: one per order it accepted.\n",
		requests, len(byKey), charges)
	return nil
}

// lockedWriter lets goroutines share a writer, line by line.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// failFirstRun fails the first run of every job after its work succeeded:
// what River sees of a worker that died after the provider call.
type failFirstRun struct{ river.MiddlewareDefaults }

func (*failFirstRun) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	if err := doInner(ctx); err != nil || job.Attempt > 1 {
		return err
	}
	return errors.New("the worker died after the provider call (simulated)")
}

// args decodes a collect job's arguments.
func args(j *rivertype.JobRow) CollectArgs {
	var a CollectArgs
	_ = json.Unmarshal(j.EncodedArgs, &a)
	return a
}

// outcome describes how a run of a job ended.
func outcome(j *rivertype.JobRow) string {
	var out Collected
	_ = json.Unmarshal(j.Output(), &out)
	switch j.State {
	case rivertype.JobStateCompleted:
		if out.Replayed {
			return "completed; the provider had seen the key and answered with its charge " + out.ProviderID
		}
		return "completed; the provider made charge " + out.ProviderID
	case rivertype.JobStateCancelled:
		return "cancelled, not retried: " + lastError(j)
	}
	return lastError(j) + "; River runs it again"
}

func lastError(j *rivertype.JobRow) string {
	if len(j.Errors) == 0 {
		return "no error"
	}
	return strings.TrimPrefix(j.Errors[len(j.Errors)-1].Error, "JobCancelError: ")
}
