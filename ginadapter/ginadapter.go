// Package ginadapter puts Gin handlers behind Idempotency-Key with the
// behaviour of httpadapter.Middleware, exactly: the same keys, scopes,
// fingerprints, replays, problems (400, 409 with Retry-After, 413, 422,
// 503), stored statuses and body limits, because it is that middleware
// underneath.
//
//	idem := ginadapter.Wrap(store, ginadapter.WithScope(func(c *gin.Context) string {
//		return c.GetString("account") // set by the authentication middleware
//	}))
//	r.POST("/transfers", idem(func(c *gin.Context) {
//		tx := ginadapter.Tx(c) // the request's transaction, never nil here
//		...
//		c.JSON(http.StatusCreated, transfer)
//	}))
//
// # Why a wrapped handler, not a middleware
//
// The store runs the handler once per attempt: again after a
// serialization failure, a deadlock, or a race lost to a twin that
// committed first, each time in a new transaction. A Gin middleware runs
// the rest of the chain with c.Next(), which runs it only the first time
// it is called for a request: a second attempt would run nothing, and
// commit an empty 200 under the key, replayed for good. So Wrap wraps the
// handler that does the work, and runs it on a copy of the request's
// *gin.Context per attempt (c.Copy(): the middlewares' values and the
// route's params, a request with a fresh body, and a writer of its own),
// so that nothing one attempt wrote or aborted leaks into the next.
// Middlewares (authentication, logging) stay in front of it and run once.
//
// # What the handler's answer does
//
// Everything it writes is buffered until the commit: a 2xx or 3xx commits
// and is stored; c.AbortWithStatus(409), c.AbortWithStatusJSON(503, ...)
// and any status WithStoredStatus does not store roll the transaction back
// and are sent as written; nothing reaches the client before the outcome
// is known, so no 2xx goes out for work that did not commit. A database
// error goes back with Fail (a serialization failure runs the handler
// again); so does the last error of c.Error when the handler wrote
// nothing, rather than commit an empty 200.
package ginadapter

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/httpadapter"
)

// Option configures Wrap: httpadapter's options (WithMethods,
// WithKeyRequired, WithStoredStatus, WithMaxRequestBytes, ...) and
// WithScope below, which sees the *gin.Context.
type Option = httpadapter.Option

// requestKey carries the request's state from the Gin handler to the
// middleware's attempts, in the request's context.
type requestKey struct{}

// request is one request's *gin.Context and its last attempt.
type request struct {
	c    *gin.Context
	last *gin.Context
}

func from(r *http.Request) *request {
	st, _ := r.Context().Value(requestKey{}).(*request)
	return st
}

// WithScope keys requests per scope (the account, the tenant) as
// httpadapter.WithScope does, with the scope read from the *gin.Context:
// what the middlewares in front of the handler set (c.GetString). An empty
// scope refuses the request (500 scope-invalid) rather than share keys
// between accounts.
func WithScope(scope func(c *gin.Context) string) Option {
	if scope == nil {
		return httpadapter.WithScope(nil) // its error names the mistake
	}
	return httpadapter.WithScope(func(r *http.Request) string {
		st := from(r)
		if st == nil {
			return ""
		}
		return scope(st.c)
	})
}

// Wrap returns what wraps a Gin handler so that it runs at most once per
// Idempotency-Key for POST and PATCH (see the package documentation), on
// store, a store of any kind: idempotency.New's (the handler's Tx), the
// pgx store, or sqlstore's (TxFrom). It panics if store is nil or an
// option is invalid, as httpadapter.Middleware does.
func Wrap[TTx any](store *idempotency.TxStore[TTx], opts ...Option) func(gin.HandlerFunc) gin.HandlerFunc {
	if store == nil {
		panic("ginadapter: Wrap(nil): want a store")
	}
	mw := httpadapter.MiddlewareFor(store, opts...)
	return func(h gin.HandlerFunc) gin.HandlerFunc {
		if h == nil {
			panic("ginadapter: Wrap(...)(nil): want a handler")
		}
		attempts := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			st := from(r)
			c := st.c.Copy()
			c.Request = r
			gw := newWriter(w)
			c.Writer = gw
			st.last = c
			h(c)
			if len(c.Errors) > 0 && !gw.Written() {
				// The handler left its error for a middleware to answer
				// after the chain: that answer would come after the
				// commit. Roll back instead.
				httpadapter.Fail(r.Context(), c.Errors.Last().Err)
				return
			}
			gw.WriteHeaderNow() // as Gin does after the chain
		}))
		return func(c *gin.Context) {
			st := &request{c: c}
			req := c.Request
			attempts.ServeHTTP(c.Writer, req.WithContext(context.WithValue(req.Context(), requestKey{}, st)))
			if st.last != nil {
				// The last attempt's errors, for the logging middlewares
				// in front.
				c.Errors = append(c.Errors, st.last.Errors...)
			}
			c.Abort()
		}
	}
}

// Tx returns the transaction of the request behind Wrap on the sqlx store
// (idempotency.New): never nil in the wrapped handler for the methods the
// middleware handles (POST and PATCH by default), key or no key. With
// another kind of store, use TxFrom.
func Tx(c *gin.Context) *sqlx.Tx { return TxFrom[*sqlx.Tx](c) }

// TxFrom is Tx for a store of any transaction type: TxFrom[*sql.Tx](c)
// behind Wrap on sqlstore's store, TxFrom[pgx.Tx](c) on the pgx store.
func TxFrom[TTx any](c *gin.Context) TTx {
	var zero TTx
	if c == nil || c.Request == nil {
		return zero
	}
	return httpadapter.TxFrom[TTx](c.Request.Context())
}

// Fail hands err, an error of the request's transaction, back to the
// middleware instead of answering it, as httpadapter.Fail does: the
// transaction rolls back, and a serialization failure or a deadlock runs
// the handler again. Call it and return.
func Fail(c *gin.Context, err error) {
	if c != nil && c.Request != nil {
		httpadapter.Fail(c.Request.Context(), err)
	}
}
