package httpadapter

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

// flowAPI serves POST /pay as a flow: a charge row, a call to a provider
// that can be made to fail or decline, and the answer (201, or 402 for a
// declined card).
type flowAPI struct {
	fail    atomic.Int64 // calls to the provider still to fail
	calls   atomic.Int64
	release chan struct{} // if set, the provider waits for it
	started chan struct{} // closed when a held call starts
}

func (a *flowAPI) handler(t *testing.T, s *idempotency.Store) http.Handler {
	t.Helper()
	f := idempotency.NewFlow("pay", func(ctx context.Context, st *idempotency.Steps[*sqlx.Tx], in chargeIn) (chargeOut, error) {
		if _, err := idempotency.Step(st, "charge", func(ctx context.Context, tx *sqlx.Tx) (bool, error) {
			_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO charges (ref, amount) VALUES (?, ?)`), in.Ref, in.Amount)
			return true, err
		}); err != nil {
			return chargeOut{}, err
		}
		return idempotency.Call(st, "authorize", func(ctx context.Context, key string) (chargeOut, error) {
			a.calls.Add(1)
			if a.release != nil {
				close(a.started)
				<-a.release
			}
			if a.fail.Add(-1) >= 0 {
				return chargeOut{}, errors.New("provider unreachable")
			}
			if in.Amount > 1000 {
				return chargeOut{}, idempotency.FinalCode("card_declined", errors.New("card declined"))
			}
			return chargeOut{ID: randomID(), Amount: in.Amount}, nil
		})
	})
	decode := func(r *http.Request, body []byte) (chargeIn, error) {
		var in chargeIn
		err := json.Unmarshal(body, &in)
		return in, err
	}
	respond := func(w http.ResponseWriter, r *http.Request, v chargeOut, err error) {
		var final *idempotency.FinalError
		if errors.As(err, &final) {
			http.Error(w, final.Code, http.StatusPaymentRequired)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(v)
	}
	return FlowHandler(s, f, decode, respond, WithRetryAfter(2*time.Second))
}

type chargeOut struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

type answer struct {
	status   int
	body     string
	replayed bool
	problem  string
	retry    string
}

func postFlow(t *testing.T, url, key, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, body: string(b), replayed: resp.Header.Get(ReplayedHeader) == "true", retry: resp.Header.Get("Retry-After")}
	if resp.Header.Get("Content-Type") == ProblemContentType {
		var p Problem
		_ = json.Unmarshal(b, &p)
		a.problem = p.Type
	}
	return a
}

// TestFlowHandler: a flow behind an Idempotency-Key answers 201 and
// replays it, resumes after a provider failure (503, then 201 with one
// charge row), stores a decline as 402 and replays it, refuses the key
// with another body (422) and without a key (400), and answers a twin 409.
func TestFlowHandler(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		a := &flowAPI{}
		srv := httptest.NewServer(a.handler(t, e.store(t, idempotency.WithWait(0))))
		t.Cleanup(srv.Close)
		url := srv.URL + "/pay"

		first := postFlow(t, url, "k1", `{"ref":"k1","amount":10}`)
		again := postFlow(t, url, "k1", `{"ref":"k1","amount":10}`)
		if first.status != 201 || first.replayed || again.status != 201 || !again.replayed || again.body != first.body {
			t.Errorf("first %+v, again %+v; want 201, then the same 201 replayed", first, again)
		}
		if r := postFlow(t, url, "k1", `{"ref":"k1","amount":11}`); r.status != 422 || r.problem != ProblemKeyReused {
			t.Errorf("other body: %+v; want 422 key-reused", r)
		}
		if r := postFlow(t, url, "", `{"ref":"k0","amount":1}`); r.status != 400 || r.problem != ProblemKeyMissing {
			t.Errorf("no key: %+v; want 400 key-missing", r)
		}
		if r := postFlow(t, url, "kx", `not json`); r.status != 400 || r.problem != ProblemRequestInvalid {
			t.Errorf("bad body: %+v; want 400 request-invalid", r)
		}

		a.fail.Store(1)
		if r := postFlow(t, url, "k2", `{"ref":"k2","amount":20}`); r.status != 503 || r.problem != ProblemFlowStopped || r.retry != "2" {
			t.Errorf("provider down: %+v; want 503 flow-stopped with Retry-After 2", r)
		}
		if r := postFlow(t, url, "k2", `{"ref":"k2","amount":20}`); r.status != 201 || r.replayed {
			t.Errorf("retry after the failure: %+v; want a fresh 201", r)
		}
		if e.charges(t, "k2") != 1 {
			t.Errorf("%d charge rows for k2; want 1 (the retry resumed after the recorded step)", e.charges(t, "k2"))
		}

		d1 := postFlow(t, url, "k3", `{"ref":"k3","amount":5000}`)
		d2 := postFlow(t, url, "k3", `{"ref":"k3","amount":5000}`)
		if d1.status != 402 || d1.replayed || d2.status != 402 || !d2.replayed || d2.body != d1.body {
			t.Errorf("declined: %+v, then %+v; want 402, then 402 replayed", d1, d2)
		}

		a.release, a.started = make(chan struct{}), make(chan struct{})
		held := make(chan answer, 1)
		go func() { held <- postFlow(t, url, "k4", `{"ref":"k4","amount":4}`) }()
		<-a.started
		if r := postFlow(t, url, "k4", `{"ref":"k4","amount":4}`); r.status != 409 || r.problem != ProblemInProgress {
			t.Errorf("twin: %+v; want 409 in-progress", r)
		}
		close(a.release)
		if r := <-held; r.status != 201 {
			t.Errorf("held: %+v; want 201", r)
		}
		if n := a.calls.Load(); n != 5 {
			t.Errorf("the provider was called %d times; want 5 (k1, k2 twice, k3, k4; no replay calls it)", n)
		}
	})
}

// TestFlowHandlerOuterCancel: a flow whose request context an outer
// middleware cancels (a server shutting down) still answers, with 503
// request-canceled, never net/http's empty 200; a retry resumes it.
func TestFlowHandlerOuterCancel(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		a := &flowAPI{release: make(chan struct{}), started: make(chan struct{})}
		h := a.handler(t, e.store(t))
		var cancel context.CancelFunc
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, c := context.WithCancel(r.Context())
			defer c()
			if cancel == nil {
				cancel = c
			}
			h.ServeHTTP(w, r.WithContext(ctx))
		}))
		t.Cleanup(srv.Close)
		url := srv.URL + "/pay"
		go func() {
			<-a.started // the provider call is under way: cancel, then let it answer
			cancel()
			close(a.release)
		}()
		if r := postFlow(t, url, "k", `{"ref":"k","amount":7}`); r.status != 503 || r.problem != ProblemRequestCanceled {
			t.Fatalf("canceled flow: %+v; want 503 request-canceled", r)
		}
		a.release, a.started = nil, nil
		if r := postFlow(t, url, "k", `{"ref":"k","amount":7}`); r.status != 201 {
			t.Errorf("retry: %+v; want 201", r)
		}
		if e.charges(t, "k") != 1 {
			t.Errorf("%d charge rows; want 1", e.charges(t, "k"))
		}
	})
}
