// Package stripeinbox receives Stripe webhooks exactly once: it verifies
// the Stripe-Signature header over the raw body with stripe-go's webhook
// package, then runs the handler in the transaction of the event id's key
// (package inbox), and answers 2xx only after that transaction committed,
// or for an event applied before.
//
//	h, err := stripeinbox.Handler(in, []string{os.Getenv("STRIPE_WEBHOOK_SECRET")},
//		func(ctx context.Context, tx pgx.Tx, ev stripe.Event) error {
//			return markPaid(ctx, tx, ev) // writes through tx only
//		})
//	mux.Handle("POST /webhooks/stripe", h)
//
// Stripe retries an event for up to three days: keep the store's keys at
// least that long (idempotency.WithTTL(7*24*time.Hour)).
package stripeinbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v82"
	"github.com/stripe/stripe-go/v82/webhook"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/inbox"
)

// Source is the inbox source of Stripe events: their ids are unique
// across a Stripe account.
const Source = "stripe"

// Verifier returns an inbox.Verifier for Stripe's signature scheme with
// the endpoint's signing secrets (more than one while a secret is rolled).
// It refuses a missing or malformed header, a signature made with no
// secret of secrets, and a timestamp further than tolerance from now
// (stripe-go's webhook.DefaultTolerance, five minutes, when 0).
func Verifier(secrets []string, tolerance time.Duration) (inbox.Verifier, error) {
	if len(secrets) == 0 {
		return nil, errors.New("stripeinbox: Verifier with no secret: pass the endpoint's signing secret (whsec_...)")
	}
	for i, s := range secrets {
		if s == "" {
			return nil, fmt.Errorf("stripeinbox: Verifier: secret %d is empty", i)
		}
	}
	if tolerance < 0 {
		return nil, fmt.Errorf("stripeinbox: Verifier: tolerance %v must not be negative", tolerance)
	}
	if tolerance == 0 {
		tolerance = webhook.DefaultTolerance
	}
	secrets = append([]string(nil), secrets...)
	return inbox.VerifierFunc(func(body []byte, h http.Header) (inbox.Event, error) {
		return verify(body, h.Get("Stripe-Signature"), secrets, tolerance)
	}), nil
}

func verify(body []byte, header string, secrets []string, tolerance time.Duration) (inbox.Event, error) {
	var err error
	for _, secret := range secrets {
		if err = webhook.ValidatePayloadWithTolerance(body, header, secret, tolerance); err == nil {
			break
		}
	}
	if err != nil {
		return inbox.Event{}, fmt.Errorf("stripeinbox: %w", err)
	}
	signedAt, err := SignedAt(header)
	if err != nil {
		return inbox.Event{}, err
	}
	var ev struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		return inbox.Event{}, fmt.Errorf("stripeinbox: the signed body is not an event: %w", err)
	}
	if ev.ID == "" {
		return inbox.Event{}, errors.New("stripeinbox: the signed event has no id")
	}
	return inbox.Event{ID: ev.ID, Type: ev.Type, SignedAt: signedAt}, nil
}

// SignedAt returns the timestamp (t=) of a Stripe-Signature header:
// "t=1495999758,v1=5257a8...,v0=6ffbb5...". It is an error when the header
// has none, or more than one.
func SignedAt(header string) (time.Time, error) {
	var at time.Time
	found := false
	for pair := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k != "t" {
			continue
		}
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil || found {
			return time.Time{}, fmt.Errorf("stripeinbox: Stripe-Signature %q: want exactly one t=<unix seconds>", header)
		}
		at, found = time.Unix(sec, 0), true
	}
	if !found {
		return time.Time{}, fmt.Errorf("stripeinbox: Stripe-Signature %q: no timestamp", header)
	}
	return at, nil
}

// Handler returns the HTTP handler of a Stripe webhook endpoint: see
// inbox.Webhook for the answers. fn gets the verified event, decoded by
// stripe-go (whatever its API version: decode ev.Data.Raw into the type of
// your endpoint's version when it differs from stripe-go's).
func Handler[TTx any](in *inbox.Inbox[TTx], secrets []string,
	fn func(ctx context.Context, tx TTx, ev stripe.Event) error) (http.Handler, error) {
	if fn == nil {
		return nil, errors.New("stripeinbox: Handler with a nil fn: pass the event handler")
	}
	v, err := Verifier(secrets, 0)
	if err != nil {
		return nil, err
	}
	return inbox.Webhook(in, Source, v, inbox.WebhookConfig{Tolerance: webhook.DefaultTolerance},
		func(ctx context.Context, tx TTx, _ inbox.Event, body []byte) error {
			var ev stripe.Event
			if err := json.Unmarshal(body, &ev); err != nil {
				// Signed by Stripe yet not an event: no retry will decode
				// it, so the failure is stored and answered 200.
				return idempotency.Final(fmt.Errorf("stripeinbox: decode the event: %w", err))
			}
			return fn(ctx, tx, ev)
		})
}
