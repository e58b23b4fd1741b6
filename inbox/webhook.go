package inbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Event is what a Verifier learned from a signed webhook: the provider's
// event id, which keys the delivery, and when it was signed.
type Event struct {
	ID       string
	Type     string    // "charge.succeeded"; for logs and for the handler
	SignedAt time.Time // the signature's timestamp; zero when the scheme has none
}

// A Verifier checks a webhook's signature over the raw body, exactly as it
// arrived, and returns the event it names. It must refuse a body changed
// after signing and a signature it cannot check; stripeinbox.Verifier is
// Stripe's. An error from Verify is answered 400 without touching the
// database.
type Verifier interface {
	Verify(body []byte, header http.Header) (Event, error)
}

// VerifierFunc adapts a function to Verifier.
type VerifierFunc func(body []byte, header http.Header) (Event, error)

// Verify calls f.
func (f VerifierFunc) Verify(body []byte, header http.Header) (Event, error) { return f(body, header) }

// WebhookConfig configures Webhook. The zero value has the defaults.
type WebhookConfig struct {
	// MaxBody is the largest body read, in bytes; a larger one is answered
	// 413. The default is 1 MiB.
	MaxBody int64
	// Tolerance is how far a signature's timestamp may be from now;
	// others are answered 400, so a captured request cannot be replayed
	// later. The default is
	// five minutes; a negative value turns the check off (for a scheme
	// whose Verifier checks it).
	Tolerance time.Duration
	// Now is the clock for Tolerance; time.Now by default.
	Now func() time.Time
}

// ErrStale reports a webhook whose signature's timestamp is further from
// now than the tolerance.
var ErrStale = errors.New("inbox: the webhook's signature is too old")

// Webhook returns an HTTP handler for a provider's signed events. It reads
// the raw body, verifies its signature with v before anything else (a
// failure, or a signature older than the tolerance, is 400 and the
// database is never touched), then runs fn for the event in its key's
// transaction (source, event id) through in.Handle and answers:
//
//   - 200 once fn's writes and the key committed, or when the event was
//     applied before (a redelivery, or a twin delivered at once);
//   - 200 when fn returned a final failure (idempotency.Final): it is
//     stored, and retrying cannot change it;
//   - 500 otherwise, with nothing committed, so the provider retries.
//
// fn gets the raw body, which the signature covers; decode it there.
func Webhook[TTx any](in *Inbox[TTx], source string, v Verifier, cfg WebhookConfig,
	fn func(ctx context.Context, tx TTx, e Event, body []byte) error) (http.Handler, error) {
	switch {
	case in == nil:
		return nil, errors.New("inbox: Webhook with a nil inbox: create one with inbox.New")
	case v == nil:
		return nil, errors.New("inbox: Webhook with a nil Verifier: pass the provider's (stripeinbox.Verifier)")
	case fn == nil:
		return nil, errors.New("inbox: Webhook with a nil fn: pass the handler")
	}
	if err := ValidateSource(source); err != nil {
		return nil, err
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.MaxBody < 0 {
		return nil, fmt.Errorf("inbox: WebhookConfig.MaxBody %d: want a positive size", cfg.MaxBody)
	}
	if cfg.Tolerance == 0 {
		cfg.Tolerance = 5 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &webhook[TTx]{in: in, source: source, v: v, cfg: cfg, fn: fn}, nil
}

type webhook[TTx any] struct {
	in     *Inbox[TTx]
	source string
	v      Verifier
	cfg    WebhookConfig
	fn     func(context.Context, TTx, Event, []byte) error
}

func (h *webhook[TTx]) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "webhooks are POSTed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, "body over "+strconv.FormatInt(h.cfg.MaxBody, 10)+" bytes", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "cannot read the body", http.StatusBadRequest)
		return
	}
	e, err := h.v.Verify(body, r.Header)
	if err == nil && h.cfg.Tolerance > 0 && !e.SignedAt.IsZero() {
		// Both ways: a timestamp far in the future would stay fresh for
		// as long as an attacker liked.
		if age := h.cfg.Now().Sub(e.SignedAt); age > h.cfg.Tolerance || age < -h.cfg.Tolerance {
			err = fmt.Errorf("%w: signed at %s, more than %s from now", ErrStale, e.SignedAt.UTC().Format(time.RFC3339), h.cfg.Tolerance)
		}
	}
	if err == nil && e.ID == "" {
		err = errors.New("inbox: the verified event has no id")
	}
	if err != nil {
		h.in.logger.Warn("inbox: webhook refused", "source", h.source, "err", err)
		http.Error(w, "signature verification failed", http.StatusBadRequest)
		return
	}
	v := h.in.Handle(r.Context(), Delivery{Source: h.source, ID: e.ID},
		func(ctx context.Context, tx TTx) error { return h.fn(ctx, tx, e, body) })
	switch {
	case v.Action == Ack:
		w.WriteHeader(http.StatusOK)
	case v.Action == DeadLetter && isFinal(v.Err):
		w.WriteHeader(http.StatusOK) // stored: a retry would get the same
	default:
		if v.Delay > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(max(v.Delay/time.Second, 1))))
		}
		http.Error(w, "not applied; retry", http.StatusInternalServerError)
	}
}
