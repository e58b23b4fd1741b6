// Package otelidempotency reports what an idempotency.Store does as
// OpenTelemetry metrics and traces.
//
// # Usage
//
//	hooks, err := otelidempotency.Hooks()
//	if err != nil { ... }
//	store, err := idempotency.New(db, idempotency.WithHooks(hooks))
//
// Without options the hooks use the global providers (otel.SetMeterProvider,
// otel.SetTracerProvider), so they pick up whatever the program installs,
// even later.
//
// # Metrics
//
//	idempotency.calls          counter   {call}  calls, by idempotency.outcome
//	idempotency.call.duration  histogram s       call duration, by idempotency.outcome
//	idempotency.retries        counter   {retry} attempts rolled back and run again
//	idempotency.pruned         counter   {row}   expired keys deleted by Prune
//	idempotency.flow.events    counter   {event} flow events (idempotency.FlowEvent), by idempotency.flow and idempotency.flow.event
//
// Keys and scopes are never metric attributes: each would make a time
// series of its own. WithAttributes adds fixed attributes (the database
// system, the service's role) to every metric and span.
//
// # Traces
//
// Every call is a span named "idempotency.Do", a child of the caller's
// span; fn's own spans are its children, since fn runs with the span's
// context. The span carries the outcome and the retry count, and has status
// Error when the call returned an error. The key and scope are on the span
// only with WithKeyAttributes: they may identify a customer.
//
// A flow's events (its start, each step recorded or replayed, takeovers,
// resumes, give-ups, its end) are events on the span of the context the
// flow runs with, such as the HTTP request's.
package otelidempotency

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/exactlyonce/idempotency"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/exactlyonce/idempotency/otelidempotency"

// Attribute keys the hooks set.
const (
	OutcomeKey = attribute.Key("idempotency.outcome") // an idempotency.Outcome
	RetriesKey = attribute.Key("idempotency.retries") // spans only
	KeyKey     = attribute.Key("idempotency.key")     // spans only, with WithKeyAttributes
	ScopeKey   = attribute.Key("idempotency.scope")   // spans only, with WithKeyAttributes

	FlowKey      = attribute.Key("idempotency.flow")       // a flow's name
	FlowEventKey = attribute.Key("idempotency.flow.event") // an idempotency.FlowEventKind
	StepKey      = attribute.Key("idempotency.flow.step")  // span events only
)

// SpanName is the name of the span of each call.
const SpanName = "idempotency.Do"

// Option configures Hooks.
type Option func(*config) error

type config struct {
	mp       metric.MeterProvider
	tp       trace.TracerProvider
	attrs    []attribute.KeyValue
	withKeys bool
}

// WithMeterProvider sets where the metrics go. The default is the global
// meter provider.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) error {
		if mp == nil {
			return errors.New("otelidempotency: WithMeterProvider(nil): want a meter provider")
		}
		c.mp = mp
		return nil
	}
}

// WithTracerProvider sets where the spans go. The default is the global
// tracer provider.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) error {
		if tp == nil {
			return errors.New("otelidempotency: WithTracerProvider(nil): want a tracer provider")
		}
		c.tp = tp
		return nil
	}
}

// WithAttributes adds fixed attributes to every metric point and span, such
// as attribute.String("db.system.name", "postgresql"). Keep them few-valued.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return func(c *config) error {
		for _, a := range attrs {
			if !a.Valid() {
				return fmt.Errorf("otelidempotency: WithAttributes: attribute %q is not valid (empty key or no value)", a.Key)
			}
		}
		c.attrs = append(c.attrs, attrs...)
		return nil
	}
}

// WithKeyAttributes puts each call's key and scope on its span (never on
// metrics). Off by default: keys and scopes may identify customers.
func WithKeyAttributes() Option {
	return func(c *config) error {
		c.withKeys = true
		return nil
	}
}

// spanKey marks the context of a call with the span the hooks started, so
// CallEnd ends that span and never the caller's.
type spanKey struct{}

// Hooks returns hooks for idempotency.WithHooks that record metrics and
// spans. The error reports a bad option or an instrument the meter provider
// refused.
func Hooks(opts ...Option) (idempotency.Hooks, error) {
	cfg := config{}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&cfg); err != nil {
			return idempotency.Hooks{}, err
		}
	}
	if cfg.mp == nil {
		cfg.mp = otel.GetMeterProvider()
	}
	if cfg.tp == nil {
		cfg.tp = otel.GetTracerProvider()
	}
	meter := cfg.mp.Meter(ScopeName)
	tracer := cfg.tp.Tracer(ScopeName)

	calls, err := meter.Int64Counter("idempotency.calls",
		metric.WithUnit("{call}"), metric.WithDescription("Idempotent calls, by outcome."))
	if err != nil {
		return idempotency.Hooks{}, instrumentErr("idempotency.calls", err)
	}
	duration, err := meter.Float64Histogram("idempotency.call.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of idempotent calls, including waits and retries."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	if err != nil {
		return idempotency.Hooks{}, instrumentErr("idempotency.call.duration", err)
	}
	retries, err := meter.Int64Counter("idempotency.retries",
		metric.WithUnit("{retry}"), metric.WithDescription("Attempts rolled back after a serialization failure or deadlock and run again."))
	if err != nil {
		return idempotency.Hooks{}, instrumentErr("idempotency.retries", err)
	}
	pruned, err := meter.Int64Counter("idempotency.pruned",
		metric.WithUnit("{row}"), metric.WithDescription("Expired keys deleted by Prune."))
	if err != nil {
		return idempotency.Hooks{}, instrumentErr("idempotency.pruned", err)
	}
	flowEvents, err := meter.Int64Counter("idempotency.flow.events",
		metric.WithUnit("{event}"), metric.WithDescription("Events of flows: starts, steps recorded and replayed, takeovers, resumes, give-ups, ends."))
	if err != nil {
		return idempotency.Hooks{}, instrumentErr("idempotency.flow.events", err)
	}

	// The attribute sets are few (one per outcome), so they are built once.
	fixed := attribute.NewSet(cfg.attrs...)
	byOutcome := map[idempotency.Outcome]metric.MeasurementOption{}
	for _, o := range []idempotency.Outcome{idempotency.Executed, idempotency.Replayed, idempotency.Mismatched,
		idempotency.InProgress, idempotency.FinalFailure, idempotency.Failed, idempotency.Invalid} {
		byOutcome[o] = metric.WithAttributeSet(attribute.NewSet(append([]attribute.KeyValue{OutcomeKey.String(string(o))}, cfg.attrs...)...))
	}
	outcomeSet := func(o idempotency.Outcome) metric.MeasurementOption {
		if m, ok := byOutcome[o]; ok {
			return m
		}
		// An outcome added to the core later still gets counted.
		return metric.WithAttributes(append([]attribute.KeyValue{OutcomeKey.String(string(o))}, cfg.attrs...)...)
	}

	return idempotency.Hooks{
		CallStart: func(ctx context.Context, scope, key string) context.Context {
			attrs := cfg.attrs
			if cfg.withKeys {
				attrs = append(append([]attribute.KeyValue{}, attrs...), KeyKey.String(key), ScopeKey.String(scope))
			}
			ctx, span := tracer.Start(ctx, SpanName, trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
			return context.WithValue(ctx, spanKey{}, span)
		},
		CallEnd: func(ctx context.Context, e idempotency.CallEvent) {
			m := outcomeSet(e.Outcome)
			calls.Add(ctx, 1, m)
			duration.Record(ctx, e.Duration.Seconds(), m)
			if e.Retries > 0 {
				retries.Add(ctx, int64(e.Retries), metric.WithAttributeSet(fixed))
			}
			span, ok := ctx.Value(spanKey{}).(trace.Span)
			if !ok {
				return
			}
			span.SetAttributes(OutcomeKey.String(string(e.Outcome)), RetriesKey.Int(e.Retries))
			if e.Err != nil {
				span.RecordError(e.Err)
				span.SetStatus(codes.Error, string(e.Outcome)+": "+e.Err.Error())
			}
			span.End()
		},
		Pruned: func(ctx context.Context, e idempotency.PruneEvent) {
			// Add even 0, so that a dashboard sees the series once a pruner runs.
			pruned.Add(ctx, e.Rows, metric.WithAttributeSet(fixed))
		},
		Flow: func(ctx context.Context, e idempotency.FlowEvent) {
			attrs := append([]attribute.KeyValue{FlowKey.String(e.Flow), FlowEventKey.String(string(e.Kind))}, cfg.attrs...)
			flowEvents.Add(ctx, 1, metric.WithAttributes(attrs...))
			span := trace.SpanFromContext(ctx)
			if !span.IsRecording() {
				return
			}
			if e.Step != "" {
				attrs = append(attrs, StepKey.String(e.Step))
			}
			if cfg.withKeys {
				attrs = append(attrs, KeyKey.String(e.Key), ScopeKey.String(e.Scope))
			}
			if e.Err != nil {
				attrs = append(attrs, attribute.String("error.message", e.Err.Error()))
			}
			span.AddEvent("idempotency.flow."+string(e.Kind), trace.WithAttributes(attrs...))
		},
	}, nil
}

func instrumentErr(name string, err error) error {
	return fmt.Errorf("otelidempotency: create instrument %s: %w", name, err)
}
