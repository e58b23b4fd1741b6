package otelidempotency_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/otelidempotency"
)

// TestFlowEvents: a flow that stops after its first step and is resumed
// by a retry is counted event by event, by flow and kind, and its events
// land on the caller's span.
func TestFlowEvents(t *testing.T) {
	tel, hooks := newTelemetry(t)
	b := testdb.Backend{Name: "sqlite", Driver: "sqlite", Kind: "sqlite"}
	db := b.Open(t)
	store, err := idempotency.New(db, idempotency.WithHooks(hooks))
	if err != nil {
		t.Fatal(err)
	}
	errDown := errors.New("provider unreachable")
	down := true
	f := idempotency.NewFlow("checkout", func(ctx context.Context, s *idempotency.Steps[*sqlx.Tx], amount int) (int, error) {
		if _, err := idempotency.Step(s, "order", func(context.Context, *sqlx.Tx) (int, error) { return amount, nil }); err != nil {
			return 0, err
		}
		return idempotency.Call(s, "authorize", func(context.Context, string) (int, error) {
			if down {
				down = false
				return 0, errDown
			}
			return amount, nil
		})
	})
	sctx, span := tel.tp.Tracer("test").Start(ctx, "request")
	if _, err := f.Do(sctx, store, "k", 5); !errors.Is(err, errDown) {
		t.Fatalf("got %v; want the call's error", err)
	}
	if v, err := f.Do(sctx, store, "k", 5); err != nil || v != 5 {
		t.Fatalf("resumed: %v, %v", v, err)
	}
	span.End()

	got := tel.sums(t, "idempotency.flow.events", otelidempotency.FlowEventKey)
	want := map[string]int64{"started": 1, "step_recorded": 2, "stopped": 1, "taken_over": 1, "step_replayed": 1, "finished": 1}
	for kind, n := range want {
		if got[kind] != n {
			t.Errorf("%s: %d events; want %d (all: %v)", kind, got[kind], n, got)
		}
	}
	if flows := tel.sums(t, "idempotency.flow.events", otelidempotency.FlowKey); flows["checkout"] != 7 {
		t.Errorf("events by flow: %v; want 7 for checkout", flows)
	}
	var names []string
	for _, s := range tel.spans.Ended() {
		if s.Name() == "request" {
			for _, e := range s.Events() {
				names = append(names, e.Name)
			}
		}
	}
	if len(names) != 7 || names[0] != "idempotency.flow.started" || names[6] != "idempotency.flow.finished" {
		t.Errorf("the request span's events: %v; want the flow's 7, from started to finished", names)
	}
}
