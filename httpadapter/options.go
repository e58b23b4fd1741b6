package httpadapter

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

type config struct {
	methods           map[string]bool
	requireKey        bool
	scope             func(*http.Request) string
	fingerprint       func(r *http.Request, body []byte) any
	replayHeaders     []string
	maxResponseBytes  int64
	maxRequestBytes   int64
	stored            func(code int) bool
	storeServerErrors bool
	retryAfter        time.Duration
	logger            *slog.Logger
}

// Option configures Middleware. Like the root package's options, an option
// checks its value and returns an error that names it; Middleware, which
// has no error to return, panics with it, as http.Handle does for a bad
// pattern: the mistake shows at start-up, not on the first request.
type Option func(*config) error

// DefaultMaxBytes is the default limit of a request body (read to fingerprint
// it) and of a response body (buffered to store it): 1 MiB.
const DefaultMaxBytes = 1 << 20

func defaultConfig() *config {
	return &config{
		methods:          map[string]bool{http.MethodPost: true, http.MethodPatch: true},
		fingerprint:      DefaultFingerprint,
		stored:           DefaultStoredStatus,
		replayHeaders:    defaultReplayHeaders(),
		maxResponseBytes: DefaultMaxBytes,
		maxRequestBytes:  DefaultMaxBytes,
		retryAfter:       DefaultRetryAfter,
		logger:           slog.New(slog.DiscardHandler),
	}
}

// newConfig is the default configuration with opts applied. A wrong option
// is a programming mistake: it panics, to say so at start-up, as
// http.Handle does for a bad pattern.
func newConfig(opts []Option) *config {
	cfg := defaultConfig()
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(cfg); err != nil {
			panic(err)
		}
	}
	return cfg
}

// WithMethods sets the methods the middleware handles; the default is POST
// and PATCH. Requests with other methods pass through untouched, and Tx
// returns nil for them.
func WithMethods(methods ...string) Option {
	return func(c *config) error {
		if len(methods) == 0 {
			return errors.New("httpadapter: WithMethods(): name at least one method")
		}
		c.methods = map[string]bool{}
		for _, m := range methods {
			if m == "" || strings.ToUpper(m) != m {
				return fmt.Errorf("httpadapter: WithMethods(%q): methods are upper case, as in http.MethodPost", m)
			}
			c.methods[m] = true
		}
		return nil
	}
}

// WithKeyRequired makes a request without an Idempotency-Key header answer
// 400. By default such a request runs its handler in a transaction of its
// own and is not protected against retries.
func WithKeyRequired() Option {
	return func(c *config) error {
		c.requireKey = true
		return nil
	}
}

// WithScope sets the function that names the scope of a request's key,
// usually the authenticated account: a key in one scope never replays
// another scope's response. It runs before the handler, so put the
// middleware inside the one that authenticates. A scope is 1 to 255 bytes.
//
// An empty scope means the function could not tell whose request this is
// (authentication runs after the middleware, or let an anonymous request
// through): the request is refused with a 500 problem scope-invalid and an
// error in the log, never run in a scope shared by everyone. So is a scope
// over 255 bytes. Return a fixed name (say "anonymous") for requests that
// may share one on purpose. Requests without a key need no scope, and the
// function is not called for them.
//
// Without WithScope there is one scope for everyone (the store's own),
// which lets any client replay any other's response if it learns the key:
// set a scope whenever clients are not all the same party.
func WithScope(scope func(r *http.Request) string) Option {
	return func(c *config) error {
		if scope == nil {
			return errors.New("httpadapter: WithScope(nil): want a function of the request")
		}
		c.scope = scope
		return nil
	}
}

// WithFingerprint sets what identifies a request, beyond its key: a retry
// whose fingerprint differs from the stored one answers 422. fn returns any
// JSON-encodable value; body is the request body as read. The default is
// DefaultFingerprint (the body byte-for-byte); JSONFingerprint compares a
// JSON body by its meaning instead. To add a part of the request, include
// it; for example an API-version header, whose value changes what the same
// body asks for:
//
//	httpadapter.WithFingerprint(func(r *http.Request, body []byte) any {
//		return []any{httpadapter.DefaultFingerprint(r, body), r.Header.Get("Api-Version")}
//	})
//
// Strings in the value must be valid UTF-8 (pass the request's bytes, a
// header a client may send in Latin-1 say, as []byte); a value that
// cannot be encoded is refused with a 500 problem fingerprint-failed.
//
// Changing the fingerprint changes it for keys already stored: until they
// expire, a retry of a request made before the change answers 422.
func WithFingerprint(fn func(r *http.Request, body []byte) any) Option {
	return func(c *config) error {
		if fn == nil {
			return errors.New("httpadapter: WithFingerprint(nil): want a function of the request")
		}
		c.fingerprint = fn
		return nil
	}
}

// defaultReplayHeaders are the response headers every replay repeats: those
// that say how to read the body (without Content-Encoding a gzip answer
// replays as bytes the client cannot read), where the result is, and Vary,
// which tells a cache between the client and the server that the body was
// chosen by request headers (a gzip body by Accept-Encoding) and must not be
// served to a client that did not send them.
func defaultReplayHeaders() []string {
	return []string{
		"Content-Type", "Content-Encoding", "Content-Language", "Content-Disposition",
		"Content-Location", "Location", "Link", "Vary",
	}
}

// WithReplayHeaders adds response headers that a replay repeats. Replays
// always repeat the headers that give the body its meaning (Content-Type,
// Content-Encoding, Content-Language, Content-Disposition), those that say
// where the result is (Location, Content-Location, Link) and Vary; other
// headers of the first answer (Cache-Control, ETag, a request id) only when
// named here. Set-Cookie never is (a replay must not hand one client's
// session to another), and naming it panics.
func WithReplayHeaders(names ...string) Option {
	return func(c *config) error {
		for _, n := range names {
			n = http.CanonicalHeaderKey(n)
			switch n {
			case "Set-Cookie", "Set-Cookie2":
				return fmt.Errorf("httpadapter: WithReplayHeaders(%q): cookies are never replayed", n)
			case "", "Content-Length", "Transfer-Encoding", "Connection", "Idempotent-Replayed":
				return fmt.Errorf("httpadapter: WithReplayHeaders(%q): this header is not the handler's to replay", n)
			}
			c.replayHeaders = append(c.replayHeaders, n)
		}
		return nil
	}
}

// WithMaxResponseBytes sets the largest response body that can be stored;
// the default is DefaultMaxBytes. A larger response is not sent: see the
// package documentation.
func WithMaxResponseBytes(n int64) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("httpadapter: WithMaxResponseBytes(%d): must not be negative", n)
		}
		c.maxResponseBytes = n
		return nil
	}
}

// WithMaxRequestBytes sets the largest request body a keyed request may
// have (the body is read whole, to fingerprint it and to give the handler a
// fresh copy if the transaction is run again); a larger one answers 413.
// The default is DefaultMaxBytes; math.MaxInt64 lifts the limit (a body is
// then bounded only by memory, or by an outer http.MaxBytesHandler).
func WithMaxRequestBytes(n int64) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("httpadapter: WithMaxRequestBytes(%d): must not be negative", n)
		}
		c.maxRequestBytes = n
		return nil
	}
}

// WithStoreServerErrors stores 5xx responses too, and replays them, as
// Stripe does, whatever WithStoredStatus says about them. By default a 5xx
// rolls the transaction back and stores nothing, so that a retry runs the
// handler again.
func WithStoreServerErrors() Option {
	return func(c *config) error {
		c.storeServerErrors = true
		return nil
	}
}

// DefaultStoredStatus is the default of WithStoredStatus. It stores a 4xx
// that is the endpoint's final word on the request (402 a declined card,
// 403, 404, 422 and the rest), and not one that says the endpoint never
// began or may answer otherwise later: 400 (the request failed validation;
// a corrected retry may reuse the key), 401 (the credentials were missing
// or expired; a retry with a fresh token may reuse the key), 408, 409 (the
// handler's own conflict), 421 (sent to the wrong server), 423, 425 and
// 429. It stores no 5xx.
func DefaultStoredStatus(code int) bool {
	switch code {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusRequestTimeout,
		http.StatusConflict, http.StatusMisdirectedRequest, http.StatusLocked,
		http.StatusTooEarly, http.StatusTooManyRequests:
		return false
	}
	return code < 500
}

// WithStoredStatus sets which of the handler's 4xx and 5xx answers are
// stored and replayed to retries. stored is asked about each such status;
// when it says false, the transaction rolls back (the handler's writes are
// undone and nothing is stored), the handler's answer is sent as it is, and
// a retry with the same key runs the handler again. A 2xx or 3xx is always
// stored: it says the work was done. The same verdict decides whether a
// request without a key commits. The default is DefaultStoredStatus;
// WithStoreServerErrors adds every 5xx to whatever stored says. To store a
// 409 of the handler's own too:
//
//	httpadapter.WithStoredStatus(func(code int) bool {
//		return code == http.StatusConflict || httpadapter.DefaultStoredStatus(code)
//	})
func WithStoredStatus(stored func(code int) bool) Option {
	return func(c *config) error {
		if stored == nil {
			return errors.New("httpadapter: WithStoredStatus(nil): want a function of the status code")
		}
		c.stored = stored
		return nil
	}
}

// WithRetryAfter sets the Retry-After of the answers a retry can resolve:
// 409 in-progress (a request with the same key is still running) and the
// 503s outcome-unknown (of a request with a key: without one, a retry is not
// safe, and none is suggested), store-failed, deadline-exceeded and
// request-canceled. The default is DefaultRetryAfter, 1 second; it is sent
// in whole seconds, and 0 sends none.
func WithRetryAfter(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("httpadapter: WithRetryAfter(%v): must not be negative", d)
		}
		c.retryAfter = d
		return nil
	}
}

// WithLogger makes the middleware log what it answers with a problem of
// its own making: panics, store failures, refused scopes and fingerprints,
// ended transactions, and a failed commit of a request without a key (as
// errors); unknown outcomes of keyed requests, unreadable bodies and
// deadline rollbacks (as warnings); canceled requests (as information:
// most are clients that hung up). The default is silent.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("httpadapter: WithLogger(nil): want a logger")
		}
		c.logger = l
		return nil
	}
}
