package httpadapter

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

type txKey struct{}

// Tx returns the transaction of the request whose context is ctx: the
// handler makes its database writes through it, and they commit together
// with the stored response. It is never nil in a handler behind Middleware
// for the methods it handles (POST and PATCH by default), key or no key;
// elsewhere it is nil. With another kind of store, use TxFrom.
func Tx(ctx context.Context) *sqlx.Tx { return TxFrom[*sqlx.Tx](ctx) }

// TxFrom is Tx for a store of any transaction type: behind MiddlewareFor on
// the pgx store, TxFrom[pgx.Tx](r.Context()) is the request's pgx.Tx. It
// returns the zero value (nil) where there is none, or where the request's
// transaction is of another type.
func TxFrom[TTx any](ctx context.Context) TTx {
	tx, _ := ctx.Value(txKey{}).(TTx)
	return tx
}

// storedResponse is what a keyed request stores as its idempotency.Run
// value, and what a replay sends.
type storedResponse struct {
	Status int         `json:"status"`
	Header http.Header `json:"header,omitempty"`
	Body   []byte      `json:"body,omitempty"`
}

// reason says why a handler's response must not commit.
type reason int

const (
	notStored reason = iota // a status WithStoredStatus does not store (a 5xx, a 429, …)
	tooLarge                // over WithMaxResponseBytes
	streamed                // Flush or Hijack
	panicked                // the handler panicked
)

// rollbackError is what fn returns to roll the transaction back without
// storing the response; the middleware then answers from it.
type rollbackError struct {
	reason reason
	c      *capture
	value  any    // the panic's value
	stack  []byte // where it panicked
}

func (e *rollbackError) Error() string {
	switch e.reason {
	case notStored:
		return fmt.Sprintf("httpadapter: the handler answered %d, a status that is not stored; rolled back", e.c.code())
	case tooLarge:
		return ErrResponseTooLarge.Error()
	case streamed:
		return ErrStreaming.Error()
	}
	return fmt.Sprintf("httpadapter: the handler panicked: %v", e.value)
}

// testHookBeforeCommit, when set by a test, runs after the handler has
// returned and its response was accepted, before the commit.
var testHookBeforeCommit func(r *http.Request)

// Middleware returns middleware that makes POST and PATCH requests with an
// Idempotency-Key header run at most once per key: the handler runs in a
// transaction (see Tx) that also stores its response, and a retry with the
// same key gets the stored response instead of running it again. See the
// package documentation for the full behaviour. It panics if store is nil
// or an option is invalid.
func Middleware(store *idempotency.Store, opts ...Option) func(http.Handler) http.Handler {
	if store == nil {
		panic("httpadapter: Middleware(nil): want a store from idempotency.New")
	}
	return MiddlewareFor(store, opts...)
}

// MiddlewareFor is Middleware for a store of any transaction type, such as
// the pgx store (pgxstore.New): handlers get the request's transaction with
// TxFrom. It panics if store is nil or an option is invalid.
func MiddlewareFor[TTx any](store *idempotency.TxStore[TTx], opts ...Option) func(http.Handler) http.Handler {
	if store == nil {
		panic("httpadapter: MiddlewareFor(nil): want a store")
	}
	cfg := defaultConfig()
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(cfg); err != nil {
			// A wrong option is a programming mistake: say so at start-up,
			// as http.Handle does for a bad pattern.
			panic(err)
		}
	}
	return func(next http.Handler) http.Handler {
		if next == nil {
			panic("httpadapter: Middleware(...)(nil): want a handler")
		}
		return &middleware[TTx]{store: store, cfg: cfg, next: next}
	}
}

type middleware[TTx any] struct {
	store *idempotency.TxStore[TTx]
	cfg   *config
	next  http.Handler
}

func (m *middleware[TTx]) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A request already in a transaction (the middleware applied twice)
	// keeps it.
	if !m.cfg.methods[r.Method] || r.Context().Value(txKey{}) != nil {
		m.next.ServeHTTP(w, r)
		return
	}
	key, err := requestKey(r.Header)
	switch {
	case errors.Is(err, errNoKey):
		if m.cfg.requireKey {
			writeProblem(w, problemKeyMissing, 0)
			return
		}
		m.serveWithoutKey(w, r)
	case err != nil:
		writeProblem(w, problemKeyInvalid(err), 0)
	default:
		m.serveWithKey(w, r, key)
	}
}

func (m *middleware[TTx]) serveWithKey(w http.ResponseWriter, r *http.Request, key string) {
	s := m.store
	if m.cfg.scope != nil {
		scope := m.cfg.scope(r)
		if scope == "" {
			// Most likely the account is unknown here (authentication runs
			// after this middleware, or let an anonymous request through).
			// Falling back to one scope for everyone would let one
			// account's key replay another's answer.
			m.cfg.logger.ErrorContext(r.Context(), "httpadapter: the WithScope function returned an empty scope; request refused",
				"method", r.Method, "path", r.URL.Path)
			writeProblem(w, problemScopeInvalid, 0)
			return
		}
		s = s.Scope(scope)
	}
	body, err := readBody(r, m.cfg.maxRequestBytes)
	if err != nil {
		var tooLarge *http.MaxBytesError // an outer http.MaxBytesHandler's limit
		switch {
		case errors.Is(err, errRequestTooLarge), errors.As(err, &tooLarge):
			writeProblem(w, problemRequestTooLarge, 0)
		case clientGone(r):
			// Nobody is listening. (A client that stops sending mid-body
			// may not have ended the context yet: it gets the 400 below,
			// which costs nothing on a dead connection.)
		default:
			// Silence would let net/http send an empty 200 for a request
			// that never ran.
			m.cfg.logger.WarnContext(r.Context(), "httpadapter: request body unreadable", "method", r.Method, "path", r.URL.Path, "err", err)
			writeProblem(w, problemRequestUnreadable, 0)
		}
		return
	}
	params := m.cfg.fingerprint(r, body)
	ctx, detach, cancel := detachable(r.Context())
	defer cancel()
	var last *capture
	res, err := idempotency.Run(ctx, s, key, params, func(ctx context.Context, tx TTx) (storedResponse, error) {
		rr := r.WithContext(context.WithValue(ctx, txKey{}, tx))
		// A fresh copy of the body for every attempt: the store runs fn
		// again after a serialization failure.
		rr.Body = io.NopCloser(bytes.NewReader(body))
		rr.ContentLength = int64(len(body))
		rr.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		rr.Form, rr.PostForm = cloneValues(r.Form), cloneValues(r.PostForm)
		c, err := m.serve(w, rr)
		last = c
		if err == nil {
			err = m.verdict(c, detach)
		}
		if err != nil {
			return storedResponse{}, err
		}
		if testHookBeforeCommit != nil {
			testHookBeforeCommit(r)
		}
		return m.stored(c), nil
	})
	switch {
	case err != nil:
		m.fail(w, r, err)
	case res.Replayed:
		replay(w, res.Value)
	default:
		last.send(w)
	}
}

func (m *middleware[TTx]) serveWithoutKey(w http.ResponseWriter, r *http.Request) {
	ctx, detach, cancel := detachable(r.Context())
	defer cancel()
	// InTx waits for a connection under the request's context; the
	// transaction's fate is then decided by verdict, not by the context.
	var c *capture
	err := idempotency.InTx(ctx, m.store, func(ctx context.Context, tx TTx) error {
		var err error
		c, err = m.serve(w, r.WithContext(context.WithValue(ctx, txKey{}, tx)))
		if err == nil {
			err = m.verdict(c, detach)
		}
		if err != nil {
			return err
		}
		if testHookBeforeCommit != nil {
			testHookBeforeCommit(r)
		}
		return nil
	})
	switch {
	case err == nil:
		c.send(w)
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		// InTx says so of a COMMIT alone (after fn returned nil). One the
		// database refused took no effect, and fail says so; this one may
		// have, and without a key a retry is not safe.
		m.cfg.logger.ErrorContext(r.Context(), "httpadapter: commit failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeProblem(w, Problem{
			Type: ProblemOutcomeUnknown, Title: "Commit failed", Status: http.StatusServiceUnavailable,
			Detail: "The request's transaction failed to commit; it may or may not have taken effect. Send an Idempotency-Key header to make retries safe.",
		}, 0)
	default:
		m.fail(w, r, err)
	}
}

// detachable returns the context the transaction runs under: it has the
// request context's values and ends with it until detach is called once the
// handler has returned. After that nothing cancels it, so a client that
// hangs up cannot stop a commit already under way. detach reports false if
// the request context ended first.
func detachable(parent context.Context) (ctx context.Context, detach func() bool, cancel func()) {
	ctx, cancelCause := context.WithCancelCause(context.WithoutCancel(parent))
	stop := context.AfterFunc(parent, func() { cancelCause(context.Cause(parent)) })
	detached := false
	detach = func() bool {
		if !detached {
			detached = stop()
		}
		return detached
	}
	return ctx, detach, func() { stop(); cancelCause(nil) }
}

// serve runs the handler into a capture, turning a panic into an error.
func (m *middleware[TTx]) serve(w http.ResponseWriter, r *http.Request) (c *capture, err error) {
	c = newCapture(w, m.cfg.maxResponseBytes)
	defer func() {
		if v := recover(); v != nil {
			err = &rollbackError{reason: panicked, c: c, value: v, stack: debug.Stack()}
		}
	}()
	m.next.ServeHTTP(c, r)
	return c, nil
}

// verdict decides whether the handler's response may commit.
func (m *middleware[TTx]) verdict(c *capture, detach func() bool) error {
	if !detach() {
		// The request's context ended while the handler ran (the client
		// hung up, or an outer deadline passed): roll back, so that a retry
		// runs the handler again rather than replay an answer nobody saw
		// being made. fail decides whether anyone is left to answer.
		return errRequestEnded
	}
	switch {
	case c.streamed:
		return &rollbackError{reason: streamed, c: c}
	case c.overflow:
		return &rollbackError{reason: tooLarge, c: c}
	case !m.storable(c.code()):
		return &rollbackError{reason: notStored, c: c}
	}
	return nil
}

// storable says whether an answer with status code may commit and be
// stored: a 2xx or 3xx always (it says the work was done), a 4xx or 5xx as
// WithStoredStatus and WithStoreServerErrors say.
func (m *middleware[TTx]) storable(code int) bool {
	switch {
	case code < 400:
		return true
	case code >= 500 && m.cfg.storeServerErrors:
		return true
	}
	return m.cfg.stored(code)
}

// stored keeps the allow-listed headers of c's response.
func (m *middleware[TTx]) stored(c *capture) storedResponse {
	s := storedResponse{Status: c.code(), Body: c.body.Bytes()}
	for _, k := range m.cfg.replayHeaders {
		if v, ok := c.header[k]; ok {
			if s.Header == nil {
				s.Header = http.Header{}
			}
			s.Header[k] = v
		}
	}
	return s
}

func replay(w http.ResponseWriter, s storedResponse) {
	h := w.Header()
	for k, v := range s.Header {
		h[k] = v
	}
	h.Set(ReplayedHeader, "true")
	w.WriteHeader(s.Status)
	_, _ = w.Write(s.Body)
}

// fail answers a request whose transaction rolled back.
func (m *middleware[TTx]) fail(w http.ResponseWriter, r *http.Request, err error) {
	var rb *rollbackError
	switch {
	case errors.As(err, &rb):
		switch rb.reason {
		case notStored:
			rb.c.send(w) // the handler's own answer
		case tooLarge:
			writeProblem(w, problemResponseTooLarge, 0)
		case streamed:
			writeProblem(w, problemStreaming, 0)
		case panicked:
			if rb.value == http.ErrAbortHandler {
				panic(http.ErrAbortHandler) // the handler meant to drop the connection
			}
			m.cfg.logger.ErrorContext(r.Context(), "httpadapter: handler panicked; rolled back",
				"method", r.Method, "path", r.URL.Path, "panic", rb.value, "stack", string(rb.stack))
			writeProblem(w, problemHandlerPanic, 0)
		}
	case errors.Is(err, idempotency.ErrTransactionEnded):
		// Not a rollback like the others: the handler's writes after the
		// end may have committed on their own, so a retry could repeat
		// them. Say so, and make it loud.
		m.cfg.logger.ErrorContext(r.Context(), "httpadapter: the database ended the transaction while the handler ran and the handler went on; its later writes may have committed outside the transaction",
			"method", r.Method, "path", r.URL.Path, "err", err)
		writeProblem(w, problemTransactionEnded, 0)
	case errors.Is(err, idempotency.ErrParamsMismatch):
		writeProblem(w, problemKeyReused, 0)
	case errors.Is(err, idempotency.ErrInProgress):
		writeProblem(w, problemInProgress, m.cfg.retryAfter)
	case errors.Is(err, idempotency.ErrInvalidScope):
		// Before ErrInvalidKey, which it also matches: the scope is the
		// service's doing, not the client's key.
		m.cfg.logger.ErrorContext(r.Context(), "httpadapter: invalid scope; request refused", "method", r.Method, "path", r.URL.Path, "err", err)
		writeProblem(w, problemScopeInvalid, 0)
	case errors.Is(err, idempotency.ErrInvalidKey):
		writeProblem(w, problemKeyInvalid(err), 0)
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		m.cfg.logger.WarnContext(r.Context(), "httpadapter: commit outcome unknown", "path", r.URL.Path, "err", err)
		writeProblem(w, problemOutcomeUnknown, m.cfg.retryAfter)
	case clientGone(r):
		// The client hung up before the handler finished; nothing was
		// stored and nobody is listening.
	case r.Context().Err() != nil:
		// A deadline of an outer middleware ran out while the handler ran
		// or while a twin was awaited. The client is still there, and an
		// empty answer would be a 200 for a request that did nothing.
		m.cfg.logger.WarnContext(r.Context(), "httpadapter: request context ended; rolled back",
			"method", r.Method, "path", r.URL.Path, "cause", context.Cause(r.Context()), "err", err)
		writeProblem(w, problemDeadlineExceeded, m.cfg.retryAfter)
	default:
		m.cfg.logger.ErrorContext(r.Context(), "httpadapter: request rolled back", "method", r.Method, "path", r.URL.Path, "err", err)
		writeProblem(w, problemStoreFailed, m.cfg.retryAfter)
	}
}

// errRequestEnded: the request's context ended before the handler returned.
var errRequestEnded = errors.New("httpadapter: the request's context ended while the handler ran; rolled back")

// clientGone reports whether the request's context ended because the
// client went away: net/http cancels it with a plain context.Canceled when
// the connection closes. Any other end (a deadline of an outer middleware,
// http.TimeoutHandler's included) leaves a client waiting for an answer,
// and an answer it must get: if the middleware wrote nothing, net/http
// would send an empty 200.
func clientGone(r *http.Request) bool {
	ctx := r.Context()
	return ctx.Err() != nil && errors.Is(context.Cause(ctx), context.Canceled)
}

var errRequestTooLarge = errors.New("httpadapter: request body over the limit")

func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > limit {
		return nil, errRequestTooLarge
	}
	// One byte past the limit tells a body at the limit from one over it;
	// at math.MaxInt64 there is no byte past it (limit+1 would overflow into
	// a negative limit that reads nothing).
	b, err := io.ReadAll(io.LimitReader(r.Body, min(limit, math.MaxInt64-1)+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, errRequestTooLarge
	}
	return b, nil
}

// DefaultFingerprint is the default of WithFingerprint. It has the method,
// the path, the raw query, the SHA-256 of the body byte-for-byte, and the
// request headers that say how to read the body: Content-Type and
// Content-Encoding. Other headers, an API-version header among them, are
// not in it; WithFingerprint shows how to add them.
//
// A middleware in front of this one that parsed the form (r.ParseForm,
// r.FormValue, r.ParseMultipartForm) has consumed the body, which then
// reads empty here. What the handler acts on is then r.PostForm, so that
// is in the fingerprint too (encoded, sorted by name), with each uploaded
// file's field, name, size, type and SHA-256.
func DefaultFingerprint(r *http.Request, body []byte) any {
	sum := sha256.Sum256(body)
	return newFingerprint(r, hex.EncodeToString(sum[:]))
}

// fingerprint is what DefaultFingerprint returns. New fields are omitted
// when empty, so that requests that do not have them keep the fingerprint
// that earlier versions stored.
type fingerprint struct {
	Method          string            `json:"method"`
	Path            string            `json:"path"`
	Query           string            `json:"query"`
	Body            string            `json:"body"`
	ContentType     string            `json:"content_type,omitempty"`
	ContentEncoding string            `json:"content_encoding,omitempty"`
	Form            string            `json:"form,omitempty"`
	Files           []fileFingerprint `json:"files,omitempty"`
}

type fileFingerprint struct {
	Field  string `json:"field"`
	Name   string `json:"name"`
	Type   string `json:"type"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func newFingerprint(r *http.Request, body string) fingerprint {
	f := fingerprint{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Body: body,
		ContentType:     mediaType(r.Header.Values("Content-Type")),
		ContentEncoding: strings.Join(r.Header.Values("Content-Encoding"), ", "),
	}
	if r.PostForm != nil {
		f.Form = r.PostForm.Encode()
	}
	if r.MultipartForm != nil {
		for _, field := range slices.Sorted(maps.Keys(r.MultipartForm.File)) {
			for _, fh := range r.MultipartForm.File[field] {
				f.Files = append(f.Files, fileFingerprint{
					Field: field, Name: fh.Filename, Type: fh.Header.Get("Content-Type"), Size: fh.Size, SHA256: fileSum(fh),
				})
			}
		}
	}
	return f
}

// mediaType is a request's Content-Type in a canonical form, without a
// multipart boundary: the boundary says where the parts of this body
// begin, not what it means, and a client that builds the body again picks
// another (when the body is in the fingerprint, its bytes differ anyway).
func mediaType(values []string) string {
	v := strings.Join(values, ", ")
	mt, params, err := mime.ParseMediaType(v)
	if err != nil {
		return v
	}
	delete(params, "boundary")
	if f := mime.FormatMediaType(mt, params); f != "" {
		return f
	}
	return v
}

// fileSum is the SHA-256 of an uploaded file, or "" if it cannot be read
// (then its name, type and size still count).
func fileSum(fh *multipart.FileHeader) string {
	f, err := fh.Open()
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// cloneValues copies a parsed form, so that each attempt of the handler
// starts from the form as it was parsed, as it does from the body.
func cloneValues(v url.Values) url.Values {
	if v == nil {
		return nil
	}
	c := make(url.Values, len(v))
	for k, vs := range v {
		c[k] = slices.Clone(vs)
	}
	return c
}

// JSONFingerprint is DefaultFingerprint with a JSON body compared by its
// meaning rather than byte-for-byte: the body is decoded and encoded again
// canonically (object keys sorted, no insignificant whitespace, escapes
// written one way), so a retry that spaces or orders its JSON otherwise
// replays rather than answer 422. Values still count, and numbers are kept
// exactly as written (100 and 100.0 differ: a handler may read them
// differently). Duplicate keys count as the last one, as encoding/json
// decodes them. A body that is not one JSON value in valid UTF-8 is
// compared byte-for-byte. Use it with WithFingerprint:
//
//	httpadapter.Middleware(store, httpadapter.WithFingerprint(httpadapter.JSONFingerprint))
//
// It costs a decode and an encode of the body per keyed request.
func JSONFingerprint(r *http.Request, body []byte) any {
	if c, ok := canonicalJSON(body); ok {
		body = c
	}
	return DefaultFingerprint(r, body)
}

// canonicalJSON returns b decoded and encoded again by encoding/json, which
// sorts object keys, drops whitespace and writes every string one way; it
// reports false when b is not exactly one JSON value. A canonical text is
// its own canonical form, so it cannot be confused with another body
// compared byte-for-byte.
func canonicalJSON(b []byte) ([]byte, bool) {
	if !utf8.Valid(b) {
		return nil, false // decoding would turn each bad byte into U+FFFD
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // keeps a number's digits: no rounding through float64
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false // more than one value, or trailing garbage
	}
	c, err := json.Marshal(v)
	if err != nil {
		return nil, false
	}
	return c, true
}
