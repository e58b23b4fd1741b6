package httpadapter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Transport is an http.RoundTripper that makes a client's writes safe to
// retry. A POST or PATCH (see Methods) without an Idempotency-Key header
// gets a fresh one (NewKey); every request that carries a key is retried
// with the same key after a network error, a 409, a 429 or a 5xx, with
// exponential backoff and jitter, honouring Retry-After. Other 4xx answers,
// 422 among them, are returned at once: retrying cannot change them. So is
// a replay (Idempotent-Replayed: true), whatever its status: the server
// stored it, and every retry with the key would get it again. So are the
// middleware's 500 problems that say a retry would fail the same way
// (response-too-large, streaming, scope-invalid, fingerprint-failed) or is
// not safe
// (transaction-ended); it reads the start of a problem body to tell, and
// leaves the whole body to the caller. It stops when the request's context
// ends.
//
// The body is sent again on each attempt, through Request.GetBody (set by
// http.NewRequest for in-memory bodies); a body without GetBody is read
// into memory first. The caller's request is never modified.
//
// # Resends inside net/http
//
// net/http's own transport (Base) treats a request that carries an
// Idempotency-Key header as safe to repeat, as it does a GET: when the
// keep-alive connection it reused from its pool fails before an answer
// arrives (typically the server closed it as idle just as the request
// went out), it sends the request again by itself, at once, on a new
// connection, rewinding the body through GetBody (which every attempt
// has). Such a resend is safe, for it carries the same key, but it happens
// within one attempt of this transport: it is not counted in MaxAttempts,
// waits no backoff and honours no Retry-After. OnRetry reports it, with
// ErrResent. To have none, give Base an http.Transport with
// DisableKeepAlives, at the cost of a new connection per request.
//
// The zero value is ready to use, on http.DefaultTransport:
//
//	client := &http.Client{Transport: &httpadapter.Transport{}}
type Transport struct {
	// Base sends each attempt; nil means http.DefaultTransport.
	Base http.RoundTripper

	// MaxAttempts bounds the attempts per request, the first included;
	// 0 means 5.
	MaxAttempts int

	// MinBackoff is the delay before the first retry, doubled for each
	// retry after it, and jittered; 0 means 100ms.
	MinBackoff time.Duration

	// MaxBackoff caps the delay between attempts; 0 means 10s. A
	// Retry-After longer than it ends the retries: the response is
	// returned to the caller, who may wait that long.
	MaxBackoff time.Duration

	// Methods are the methods that get a key when they have none; nil
	// means POST and PATCH.
	Methods []string

	// NewKey makes a key; nil means the package's NewKey (a UUIDv7).
	NewKey func() string

	// OnRetry, if set, is called for every retry, to log or count them:
	// before the transport waits to send the request again, and when
	// net/http has sent it again by itself (see Resends inside net/http). req is the attempt's
	// request, with its Idempotency-Key; attempt counts the transport's
	// attempts from 1 and names the one that failed; resp is its response
	// (nil after a network error), whose body is discarded after OnRetry
	// returns; err is its error; wait is how long the transport waits
	// before the next attempt. For a resend inside net/http, resp is nil,
	// err is ErrResent and wait is 0, and the attempt goes on. OnRetry runs
	// on the goroutine of the request (or of net/http's connection): keep
	// it short.
	OnRetry func(req *http.Request, attempt int, resp *http.Response, err error, wait time.Duration)
}

// ErrResent is the error OnRetry gets when net/http has sent an attempt
// again by itself, on a new connection, after the reused one it went out
// on failed before an answer.
var ErrResent = errors.New("httpadapter: a reused connection failed before an answer; net/http sent the request again on a new connection")

var _ http.RoundTripper = (*Transport)(nil)

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	key := req.Header.Get(KeyHeader)
	if key == "" && t.keyed(req.Method) {
		if t.NewKey != nil {
			key = t.NewKey()
		} else {
			key = NewKey()
		}
	}
	if key == "" {
		// Without a key a retry could apply the request twice.
		return base.RoundTrip(req)
	}
	getBody, err := rewindable(req)
	if err != nil {
		return nil, err
	}
	ctx := req.Context()
	attempts := t.MaxAttempts
	if attempts <= 0 {
		attempts = 5
	}
	for attempt := 1; ; attempt++ {
		var r *http.Request
		r = req.Clone(t.traced(ctx, &r, attempt))
		r.Header.Set(KeyHeader, key)
		if getBody != nil {
			if r.Body, err = getBody(); err != nil {
				return nil, err
			}
			r.GetBody = getBody // what net/http rewinds with, if it resends
		}
		resp, err := base.RoundTrip(r)
		if ctx.Err() != nil {
			if err == nil {
				return resp, nil // complete; the caller sees ctx end on reading
			}
			return nil, err
		}
		wait, retry := t.shouldRetry(resp, err, attempt)
		if !retry || attempt >= attempts {
			return resp, err
		}
		if t.OnRetry != nil {
			t.OnRetry(r, attempt, resp, err, wait)
		}
		if resp != nil {
			// Drain a little so the connection can be reused.
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			_ = resp.Body.Close()
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
}

// traced returns ctx with a trace that reports net/http's own resends of
// attempt to OnRetry: net/http gets a connection once per send, so a
// second connection within one attempt is a resend.
func (t *Transport) traced(ctx context.Context, r **http.Request, attempt int) context.Context {
	if t.OnRetry == nil {
		return ctx
	}
	var conns atomic.Int32
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) {
			if conns.Add(1) > 1 {
				t.OnRetry(*r, attempt, nil, ErrResent, 0)
			}
		},
	})
}

func (t *Transport) keyed(method string) bool {
	if t.Methods == nil {
		return method == http.MethodPost || method == http.MethodPatch
	}
	for _, m := range t.Methods {
		if m == method {
			return true
		}
	}
	return false
}

// shouldRetry says whether an attempt's outcome is worth a retry with the
// same key, and after how long.
func (t *Transport) shouldRetry(resp *http.Response, err error, attempt int) (time.Duration, bool) {
	minB, maxB := t.MinBackoff, t.MaxBackoff
	if minB <= 0 {
		minB = 100 * time.Millisecond
	}
	if maxB <= 0 {
		maxB = 10 * time.Second
	}
	backoff := backoff(minB, maxB, attempt)
	if err != nil {
		return backoff, true
	}
	if resp.Header.Get(ReplayedHeader) == "true" {
		// A stored answer: every retry with this key gets it again.
		return 0, false
	}
	switch c := resp.StatusCode; {
	case c == http.StatusConflict, c == http.StatusTooManyRequests:
	case c >= 500:
		if finalProblem(resp) {
			return 0, false
		}
	default:
		return 0, false
	}
	if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		if d > maxB {
			return 0, false
		}
		return max(d, time.Millisecond), true
	}
	return backoff, true
}

// backoff returns the wait after attempt (counted from 1): minB doubled for
// each attempt after the first, capped at maxB (both positive), with equal
// jitter.
func backoff(minB, maxB time.Duration, attempt int) time.Duration {
	ceiling := maxB
	// Compare before shifting: minB<<shift overflows, into a negative
	// duration, long before the cap would be reached with a large minB.
	if shift := max(attempt-1, 0); shift < 63 && minB <= maxB>>shift {
		ceiling = minB << shift
	}
	// Equal jitter: within [ceiling/2, ceiling], never zero, never in step
	// with other clients.
	return ceiling - rand.N(ceiling/2+1)
}

// problemPeek bounds how much of a problem body finalProblem reads: the
// middleware's problems are well under it.
const problemPeek = 4 << 10

// finalProblem reports whether resp is one of the middleware's 5xx
// problems that a retry must not follow: transaction-ended (the handler's
// writes may have committed outside its transaction, so a retry could
// repeat them), and response-too-large, streaming, scope-invalid and
// fingerprint-failed (a retry fails the same way). It reads the start of a problem body and puts
// it back, so the caller reads the whole body.
func finalProblem(resp *http.Response) bool {
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != ProblemContentType || resp.Body == nil {
		return false
	}
	head, err := io.ReadAll(io.LimitReader(resp.Body, problemPeek))
	resp.Body = readCloser{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
	if err != nil {
		return false // the caller meets the error when it reads on
	}
	var p struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(head, &p) != nil {
		return false
	}
	switch p.Type {
	case ProblemTransactionEnded, ProblemResponseTooLarge, ProblemStreaming, ProblemScopeInvalid, ProblemFingerprintFailed:
		return true
	}
	return false
}

type readCloser struct {
	io.Reader
	io.Closer
}

// retryAfter parses a Retry-After value: delay-seconds or an HTTP-date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(secs) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

// rewindable returns how to get a fresh copy of req's body for each
// attempt, reading a body that has no GetBody into memory.
func rewindable(req *http.Request) (func() (io.ReadCloser, error), error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	if req.GetBody != nil {
		// Every attempt sends a copy; the original is the caller's to
		// close through us.
		_ = req.Body.Close()
		return req.GetBody, nil
	}
	b, err := io.ReadAll(req.Body)
	_ = req.Body.Close()
	if err != nil {
		return nil, errors.Join(errors.New("httpadapter: read the request body to make it retryable"), err)
	}
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, nil
}
