package otelidempotency_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/otelidempotency"
)

var ctx = context.Background()

// telemetry is an SDK pipeline that keeps everything in memory.
type telemetry struct {
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
}

func newTelemetry(t *testing.T, opts ...otelidempotency.Option) (*telemetry, idempotency.Hooks) {
	t.Helper()
	tel := &telemetry{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	t.Cleanup(func() { _ = mp.Shutdown(ctx); _ = tel.tp.Shutdown(ctx) })
	hooks, err := otelidempotency.Hooks(append([]otelidempotency.Option{
		otelidempotency.WithMeterProvider(mp), otelidempotency.WithTracerProvider(tel.tp)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return tel, hooks
}

// sums returns each Int64 sum of metric name by the value of attribute key
// ("" for points without it).
func (tel *telemetry) sums(t *testing.T, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != otelidempotency.ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[valueOf(p.Attributes, key)] += p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[valueOf(p.Attributes, key)] += int64(p.Count)
				}
			default:
				t.Fatalf("metric %s is a %T", name, m.Data)
			}
		}
	}
	return out
}

// valueOf is the value of key in s as a string, "" when s lacks it.
func valueOf(s attribute.Set, key attribute.Key) string {
	if v, ok := s.Value(key); ok {
		return v.String()
	}
	return ""
}

// attrKeys lists every attribute key on every point of every metric.
func (tel *telemetry) attrKeys(t *testing.T) map[attribute.Key]bool {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	keys := map[attribute.Key]bool{}
	add := func(s attribute.Set) {
		for _, kv := range s.ToSlice() {
			keys[kv.Key] = true
		}
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					add(p.Attributes)
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					add(p.Attributes)
				}
			}
		}
	}
	return keys
}

func backends(t *testing.T) []testdb.Backend {
	t.Helper()
	var bs []testdb.Backend
	for _, b := range testdb.Backends() {
		if b.Name == "sqlite" || b.Name == "pgx" || b.Name == "mysql" {
			bs = append(bs, b)
		}
	}
	return bs
}

func insert(key string) func(context.Context, *sqlx.Tx) (string, error) {
	return func(ctx context.Context, tx *sqlx.Tx) (string, error) {
		_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO orders (k) VALUES (?)`), key)
		return "order-" + key, err
	}
}

// TestRealCalls drives real calls of every outcome through a store and
// checks the metrics and the spans they produced.
func TestRealCalls(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			db := b.Open(t)
			if _, err := db.Exec(`CREATE TABLE orders (k VARCHAR(255) NOT NULL)`); err != nil {
				t.Fatal(err)
			}
			tel, hooks := newTelemetry(t, otelidempotency.WithAttributes(attribute.String("db.system.name", b.Kind)))
			s, err := idempotency.New(db, idempotency.WithHooks(hooks))
			if err != nil {
				t.Fatal(err)
			}
			declined := errors.New("card declined")
			boom := errors.New("boom")

			steps := []struct {
				key     string
				params  int
				fn      func(context.Context, *sqlx.Tx) (string, error)
				outcome idempotency.Outcome
			}{
				{"a", 1, insert("a"), idempotency.Executed},
				{"b", 1, insert("b"), idempotency.Executed},
				{"a", 1, insert("a"), idempotency.Replayed},
				{"a", 1, insert("a"), idempotency.Replayed},
				{"a", 2, insert("a"), idempotency.Mismatched},
				{"c", 1, func(context.Context, *sqlx.Tx) (string, error) {
					return "", &idempotency.FinalError{Code: "card_declined", Err: declined}
				}, idempotency.FinalFailure},
				{"d", 1, func(context.Context, *sqlx.Tx) (string, error) { return "", boom }, idempotency.Failed},
				{"bad\nkey", 1, insert("x"), idempotency.Invalid},
			}
			for _, st := range steps {
				_, err := idempotency.Do(ctx, s, st.key, st.params, st.fn)
				if (err == nil) != (st.outcome == idempotency.Executed || st.outcome == idempotency.Replayed) {
					t.Fatalf("Do(%q) = %v; want outcome %s", st.key, err, st.outcome)
				}
			}

			want := map[string]int64{"executed": 2, "replayed": 2, "mismatched": 1, "final_failure": 1, "failed": 1, "invalid": 1}
			for _, name := range []string{"idempotency.calls", "idempotency.call.duration"} {
				got := tel.sums(t, name, otelidempotency.OutcomeKey)
				if !equal(got, want) {
					t.Errorf("%s by outcome = %v, want %v", name, got, want)
				}
			}
			keys := tel.attrKeys(t)
			if keys[otelidempotency.KeyKey] || keys[otelidempotency.ScopeKey] {
				t.Errorf("metrics carry key or scope attributes: %v", keys)
			}
			if !keys["db.system.name"] {
				t.Errorf("metrics lack the WithAttributes attribute: %v", keys)
			}

			spans := tel.spans.Ended()
			if len(spans) != len(steps) {
				t.Fatalf("%d spans ended, want one per call (%d)", len(spans), len(steps))
			}
			for i, sp := range spans {
				st := steps[i]
				attrs := map[attribute.Key]attribute.Value{}
				for _, kv := range sp.Attributes() {
					attrs[kv.Key] = kv.Value
				}
				if sp.Name() != otelidempotency.SpanName {
					t.Errorf("span %d is named %q", i, sp.Name())
				}
				if got := attrs[otelidempotency.OutcomeKey].AsString(); got != string(st.outcome) {
					t.Errorf("span %d (%s): outcome %q, want %q", i, st.key, got, st.outcome)
				}
				if _, ok := attrs[otelidempotency.RetriesKey]; !ok {
					t.Errorf("span %d has no retries attribute", i)
				}
				if _, ok := attrs[otelidempotency.KeyKey]; ok {
					t.Errorf("span %d carries the key without WithKeyAttributes", i)
				}
				failed := st.outcome != idempotency.Executed && st.outcome != idempotency.Replayed
				switch code := sp.Status().Code; {
				case failed && code != codes.Error:
					t.Errorf("span %d (%s) status %v, want Error", i, st.outcome, code)
				case !failed && code == codes.Error:
					t.Errorf("span %d (%s) status Error: %s", i, st.outcome, sp.Status().Description)
				}
			}
			if d := spans[5].Status().Description; !strings.Contains(d, "card declined") {
				t.Errorf("final failure span status %q does not name the failure", d)
			}

			// Prune reports its rows: expire two keys, prune them.
			short, err := idempotency.New(db, idempotency.WithHooks(hooks), idempotency.WithTTL(time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"e1", "e2"} {
				if _, err := idempotency.Do(ctx, short, k, 1, insert(k)); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(10 * time.Millisecond)
			n, err := s.Prune(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := tel.sums(t, "idempotency.pruned", "")[""]; n != 2 || got != 2 {
				t.Errorf("Prune deleted %d, idempotency.pruned = %d; want 2 and 2", n, got)
			}
		})
	}
}

// TestSpanParentAndKeys: the call's span is a child of the caller's span
// and the parent of fn's spans, and WithKeyAttributes puts key and scope
// on it.
func TestSpanParentAndKeys(t *testing.T) {
	t.Parallel()
	db := testdb.Backends()[0].Open(t)
	tel, hooks := newTelemetry(t, otelidempotency.WithKeyAttributes())
	s, err := idempotency.New(db, idempotency.WithHooks(hooks))
	if err != nil {
		t.Fatal(err)
	}
	tracer := tel.tp.Tracer("test")
	pctx, parent := tracer.Start(ctx, "request")
	_, err = idempotency.Do(pctx, s.Scope("acct_1"), "k1", nil, func(ctx context.Context, _ *sqlx.Tx) (int, error) {
		_, child := tracer.Start(ctx, "fn")
		child.End()
		return 1, nil
	})
	parent.End()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, sp := range tel.spans.Ended() {
		byName[sp.Name()] = sp
	}
	call, fn := byName[otelidempotency.SpanName], byName["fn"]
	if call == nil || fn == nil {
		t.Fatalf("spans: %v", byName)
	}
	if call.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Error("the call's span is not a child of the caller's")
	}
	if fn.Parent().SpanID() != call.SpanContext().SpanID() {
		t.Error("fn's span is not a child of the call's")
	}
	attrs := map[attribute.Key]string{}
	for _, kv := range call.Attributes() {
		attrs[kv.Key] = kv.Value.String()
	}
	if attrs[otelidempotency.KeyKey] != "k1" || attrs[otelidempotency.ScopeKey] != "acct_1" {
		t.Errorf("span attributes %v; want key k1 and scope acct_1", attrs)
	}
}

// TestRetriesCounted feeds CallEnd a retried call: retries are counted
// without outcome or key attributes. (Real retries need a serialization
// failure, which tests cannot cause on demand without timing.)
func TestRetriesCounted(t *testing.T) {
	t.Parallel()
	tel, hooks := newTelemetry(t)
	c := hooks.CallStart(ctx, "s", "k")
	hooks.CallEnd(c, idempotency.CallEvent{Scope: "s", Key: "k", Outcome: idempotency.Executed, Retries: 3, Duration: time.Millisecond})
	if got := tel.sums(t, "idempotency.retries", otelidempotency.OutcomeKey); got[""] != 3 || len(got) != 1 {
		t.Errorf("idempotency.retries = %v, want 3 with no outcome", got)
	}
	sp := tel.spans.Ended()
	if len(sp) != 1 {
		t.Fatalf("%d spans", len(sp))
	}
	for _, kv := range sp[0].Attributes() {
		if kv.Key == otelidempotency.RetriesKey && kv.Value.AsInt64() != 3 {
			t.Errorf("span retries = %d, want 3", kv.Value.AsInt64())
		}
	}
}

func TestOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opt  otelidempotency.Option
		want string
	}{
		{otelidempotency.WithMeterProvider(nil), "WithMeterProvider(nil)"},
		{otelidempotency.WithTracerProvider(nil), "WithTracerProvider(nil)"},
		{otelidempotency.WithAttributes(attribute.KeyValue{}), "WithAttributes"},
	} {
		if _, err := otelidempotency.Hooks(tc.opt); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Hooks with a bad option = %v; want an error naming %s", err, tc.want)
		}
	}
	if _, err := otelidempotency.Hooks(); err != nil {
		t.Errorf("Hooks() with the global providers = %v", err)
	}
}

func equal(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
