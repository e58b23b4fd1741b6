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
	"sync/atomic"
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

// Unwrap gives ProblemFor the capture's error of a response that is too
// large or streamed.
func (e *rollbackError) Unwrap() error {
	switch e.reason {
	case tooLarge:
		return ErrResponseTooLarge
	case streamed:
		return ErrStreaming
	}
	return nil
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
	cfg := newConfig(opts)
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
	case errors.Is(err, errNoKey) && !m.cfg.requireKey:
		m.serveWithoutKey(w, r)
	case err != nil:
		m.fail(w, r, err) // 400 key-missing or key-invalid
	default:
		m.serveWithKey(w, r, key)
	}
}

func (m *middleware[TTx]) serveWithKey(w http.ResponseWriter, r *http.Request, key string) {
	s, ok := scoped(m.cfg, m.store, r)
	if !ok {
		m.cfg.write(w, problemScopeInvalid)
		return
	}
	body, err := readBody(r, m.cfg.maxRequestBytes)
	if err != nil {
		// 413 for a limit (ours, or an outer http.MaxBytesHandler's), 400
		// for a body that broke off. Even for a client that hung up
		// mid-body: silence would let net/http send an empty 200 to one
		// that did not, and an answer costs nothing on a dead connection.
		m.fail(w, r, err)
		return
	}
	params := m.cfg.fingerprint(r, body)
	ctx, detach, cancel := detachable(r.Context())
	defer cancel()
	// A fresh copy of the body for every attempt: the store runs fn again
	// after a serialization failure.
	fresh := func(rr *http.Request) {
		rr.Body = io.NopCloser(bytes.NewReader(body))
		rr.ContentLength = int64(len(body))
		rr.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		rr.Form, rr.PostForm = cloneValues(r.Form), cloneValues(r.PostForm)
	}
	var last *capture
	res, err := idempotency.Run(ctx, s, key, params, func(ctx context.Context, tx TTx) (storedResponse, error) {
		c, err := m.attempt(ctx, w, r, tx, detach, fresh)
		last = c
		if err != nil {
			return storedResponse{}, err
		}
		return m.stored(c), nil
	})
	switch {
	case err != nil:
		if res.Replayed {
			// A stored failure (idempotency.Final), answered as it was.
			w.Header().Set(ReplayedHeader, "true")
		}
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
		c, err = m.attempt(ctx, w, r, tx, detach, nil)
		return err
	})
	switch {
	case err == nil:
		c.send(w)
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		// InTx says so of a COMMIT alone (after fn returned nil). One the
		// database refused took no effect, and fail says so; this one may
		// have, and without a key a retry is not safe.
		m.cfg.logger.ErrorContext(r.Context(), "httpadapter: commit failed", "method", r.Method, "path", r.URL.Path, "err", err)
		p := ProblemFor(err)
		p.Title, p.RetryAfter = "Commit failed", 0
		p.Detail = "The request's transaction failed to commit; it may or may not have taken effect. Send an Idempotency-Key header to make retries safe."
		WriteProblem(w, p)
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

// attemptContext is the context of one attempt's handler: it carries the
// attempt's transaction (Tx) and where Fail puts the handler's error.
func attemptContext[TTx any](ctx context.Context, tx TTx, failed *failure) context.Context {
	return context.WithValue(context.WithValue(ctx, txKey{}, tx), failKey{}, failed)
}

// attempt runs the handler once for r, in tx under ctx (the transaction's
// context), and returns its response with the error that keeps it from
// committing, if any. fresh, when not nil, gives the attempt's copy of r
// what the handler may consume (the body, the parsed form).
func (m *middleware[TTx]) attempt(ctx context.Context, w http.ResponseWriter, r *http.Request, tx TTx, detach func() bool, fresh func(*http.Request)) (*capture, error) {
	failed := new(failure)
	rr := r.WithContext(attemptContext(ctx, tx, failed))
	if fresh != nil {
		fresh(rr)
	}
	c, err := m.serve(w, rr, failed)
	if err == nil {
		err = m.verdict(c, detach)
	}
	if err == nil && testHookBeforeCommit != nil {
		testHookBeforeCommit(r)
	}
	return c, err
}

// serve runs the handler into a capture, turning a panic, or an error the
// handler handed back with Fail, into an error.
func (m *middleware[TTx]) serve(w http.ResponseWriter, r *http.Request, failed *failure) (c *capture, err error) {
	c = newCapture(w, m.cfg.maxResponseBytes)
	defer func() {
		if v := recover(); v != nil {
			err = &rollbackError{reason: panicked, c: c, value: v, stack: debug.Stack()}
		}
	}()
	m.next.ServeHTTP(c, r)
	if f := failed.err.Load(); f != nil {
		return c, f
	}
	return c, nil
}

type failKey struct{}

// failure holds what the handler of one attempt handed back with Fail.
type failure struct{ err atomic.Pointer[handlerError] }

// handlerError is an error a handler handed back with Fail. It unwraps to
// the handler's error, so that the store sees a serialization failure or a
// deadlock as one (and retries it) and ProblemFor maps it as any other.
type handlerError struct{ err error }

func (e *handlerError) Error() string { return "httpadapter: the handler failed: " + e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

// Fail hands err, an error of the request's transaction, back to the
// middleware instead of answering it: call it from a handler behind
// Middleware, with the request's context, and return. The middleware then
// rolls the transaction back and does with err what idempotency.Do does
// with an error of fn. A serialization failure or a deadlock (SQLSTATE
// 40001 or 40P01 on Postgres, 1213 on MySQL and MariaDB, a write conflict
// on TiDB) runs the handler again, in a new transaction, up to the store's
// WithMaxRetries; an error made final with idempotency.Final or FinalCode
// is stored under the key and replayed. Any other error, or retries run
// out, is answered with ProblemFor's problem (503 store-failed for most:
// rolled back, safe to retry). Whatever the handler wrote is discarded.
//
//	if _, err := tx.ExecContext(ctx, `UPDATE accounts ...`); err != nil {
//		httpadapter.Fail(r.Context(), err)
//		return
//	}
//
// A request without an Idempotency-Key runs in idempotency.InTx, which
// does not run its handler again: the error is answered as above. Fail(ctx,
// nil) does nothing; so does Fail outside a handler behind the middleware
// (a method it passes through), where the handler must answer itself. The
// first call of an attempt counts.
func Fail(ctx context.Context, err error) {
	if err == nil {
		return
	}
	if f, ok := ctx.Value(failKey{}).(*failure); ok {
		f.err.CompareAndSwap(nil, &handlerError{err: err})
	}
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

// fail answers a request that failed with err: with the handler's own
// answer when it is one the middleware does not store, and otherwise with
// ProblemFor's problem, always: even when the request's context was
// canceled, for that may be the server's doing (a BaseContext canceled at
// shutdown, an outer middleware's cancel) while the client still waits,
// and silence would let net/http send it an empty 200. An answer to a
// client that hung up costs nothing.
func (m *middleware[TTx]) fail(w http.ResponseWriter, r *http.Request, err error) {
	var rb *rollbackError
	if errors.As(err, &rb) {
		switch {
		case rb.reason == notStored:
			rb.c.send(w) // the handler's own answer
			return
		case rb.reason == panicked && rb.value == http.ErrAbortHandler:
			panic(http.ErrAbortHandler) // the handler meant to drop the connection
		}
	}
	p := ProblemFor(err)
	switch p.Type {
	case ProblemStoreFailed, ProblemRequestCanceled, ProblemDeadlineExceeded:
		if ctxErr := r.Context().Err(); ctxErr != nil {
			// The request's context ended while the handler ran, while a
			// twin was awaited or while the store worked: err may be what
			// that did to a statement, or the end of the transaction's
			// context, which is canceled (with the request's error as its
			// cause) however the request's ended.
			p = ProblemFor(ctxErr)
		}
	}
	m.log(r, p, err, rb)
	m.cfg.write(w, p)
}

// write sends p with the configured Retry-After (WithRetryAfter).
func (c *config) write(w http.ResponseWriter, p Problem) {
	if p.RetryAfter > 0 {
		p.RetryAfter = c.retryAfter
	}
	WriteProblem(w, p)
}

// scoped returns s under the request's scope (WithScope). It reports false,
// having logged why, when the scope function could not tell whose request
// this is: most likely the account is unknown here (authentication runs
// after this middleware, or let an anonymous request through), and falling
// back to one scope for everyone would let one account's key replay
// another's answer.
func scoped[TTx any](c *config, s *idempotency.TxStore[TTx], r *http.Request) (*idempotency.TxStore[TTx], bool) {
	if c.scope == nil {
		return s, true
	}
	scope := c.scope(r)
	if scope == "" {
		c.logger.ErrorContext(r.Context(), "httpadapter: the WithScope function returned an empty scope; request refused",
			"method", r.Method, "path", r.URL.Path)
		return nil, false
	}
	return s.Scope(scope), true
}

// log logs the problems that mean the service is at fault as errors, and
// those a retry resolves as warnings (a canceled request as information:
// most are clients that hung up).
func (m *middleware[TTx]) log(r *http.Request, p Problem, err error, rb *rollbackError) {
	l, ctx := m.cfg.logger, r.Context()
	where := []any{"method", r.Method, "path", r.URL.Path}
	switch p.Type {
	case ProblemHandlerPanic:
		l.ErrorContext(ctx, "httpadapter: handler panicked; rolled back",
			append(where, "panic", rb.value, "stack", string(rb.stack))...)
	case ProblemTransactionEnded:
		// Not a rollback like the others: the handler's writes after the
		// end may have committed on their own, so a retry could repeat
		// them. Say so, and make it loud.
		l.ErrorContext(ctx, "httpadapter: the transaction ended while the handler ran (the database ended it and the handler went on, or the handler committed or rolled it back itself); its writes may have committed outside the transaction",
			append(where, "err", err)...)
	case ProblemScopeInvalid:
		l.ErrorContext(ctx, "httpadapter: invalid scope; request refused", append(where, "err", err)...)
	case ProblemFingerprintFailed:
		l.ErrorContext(ctx, "httpadapter: the request's fingerprint cannot be encoded; request refused", append(where, "err", err)...)
	case ProblemStoreFailed:
		l.ErrorContext(ctx, "httpadapter: request rolled back", append(where, "err", err)...)
	case ProblemOutcomeUnknown:
		l.WarnContext(ctx, "httpadapter: commit outcome unknown", append(where, "err", err)...)
	case ProblemRequestUnreadable:
		l.WarnContext(ctx, "httpadapter: request body unreadable", append(where, "err", err)...)
	case ProblemDeadlineExceeded:
		l.WarnContext(ctx, "httpadapter: request context ended; rolled back",
			append(where, "cause", context.Cause(ctx), "err", err)...)
	case ProblemRequestCanceled:
		l.InfoContext(ctx, "httpadapter: request canceled; rolled back",
			append(where, "cause", context.Cause(ctx), "err", err)...)
	}
}

// errRequestEnded: the request's context ended before the handler returned.
var errRequestEnded = errors.New("httpadapter: the request's context ended while the handler ran; rolled back")

var (
	errRequestTooLarge   = errors.New("httpadapter: request body over the limit")
	errRequestUnreadable = errors.New("httpadapter: request body unreadable")
)

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
		if errors.As(err, new(*http.MaxBytesError)) {
			return nil, err // an outer http.MaxBytesHandler's limit
		}
		return nil, fmt.Errorf("%w: %w", errRequestUnreadable, err)
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
// not in it; WithFingerprint shows how to add them. Text that is not valid
// UTF-8 (a path with %FF, a Latin-1 header) counts by its bytes.
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
	Method          bytesText         `json:"method"`
	Path            bytesText         `json:"path"`
	Query           bytesText         `json:"query"`
	Body            string            `json:"body"`
	ContentType     bytesText         `json:"content_type,omitempty"`
	ContentEncoding bytesText         `json:"content_encoding,omitempty"`
	Form            string            `json:"form,omitempty"`
	Files           []fileFingerprint `json:"files,omitempty"`
}

type fileFingerprint struct {
	Field  bytesText `json:"field"`
	Name   bytesText `json:"name"`
	Type   bytesText `json:"type"`
	Size   int64     `json:"size"`
	SHA256 string    `json:"sha256"`
}

// bytesText is a part of the request as the client sent it: text, but not
// always valid UTF-8 (a path with %FF, a header or an upload's name with a
// Latin-1 byte). Valid UTF-8 encodes as the JSON string it always did, so
// the fingerprints of such requests, stored by earlier versions, stay as
// they were; anything else encodes its bytes, as {"bytes": base64}, which
// no string encodes to. (As a plain string, JSON would turn each invalid
// byte into U+FFFD and make different requests look the same, which
// idempotency.Fingerprint refuses.)
type bytesText string

func (t bytesText) MarshalJSON() ([]byte, error) {
	if utf8.ValidString(string(t)) {
		return json.Marshal(string(t))
	}
	return json.Marshal(struct {
		Bytes []byte `json:"bytes"`
	}{[]byte(t)})
}

func newFingerprint(r *http.Request, body string) fingerprint {
	f := fingerprint{
		Method: bytesText(r.Method), Path: bytesText(r.URL.Path), Query: bytesText(r.URL.RawQuery), Body: body,
		ContentType:     bytesText(mediaType(r.Header.Values("Content-Type"))),
		ContentEncoding: bytesText(strings.Join(r.Header.Values("Content-Encoding"), ", ")),
	}
	if r.PostForm != nil {
		f.Form = r.PostForm.Encode() // percent-encoded: ASCII
	}
	if r.MultipartForm != nil {
		for _, field := range slices.Sorted(maps.Keys(r.MultipartForm.File)) {
			for _, fh := range r.MultipartForm.File[field] {
				f.Files = append(f.Files, fileFingerprint{
					Field: bytesText(field), Name: bytesText(fh.Filename), Type: bytesText(fh.Header.Get("Content-Type")),
					Size: fh.Size, SHA256: fileSum(fh),
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
