// Package echoadapter puts Echo handlers behind Idempotency-Key with the
// behaviour of httpadapter.Middleware, exactly: the same keys, scopes,
// fingerprints, replays, problems (400, 409 with Retry-After, 413, 422,
// 503), stored statuses and body limits, because it is that middleware
// underneath.
//
//	e.Use(echoadapter.Middleware(store, echoadapter.WithScope(func(c echo.Context) string {
//		return c.Get("account").(string) // set by the authentication middleware
//	})))
//	e.POST("/transfers", func(c echo.Context) error {
//		tx := echoadapter.Tx(c) // the request's transaction, never nil here
//		if err := move(c.Request().Context(), tx, req); err != nil {
//			return err // rolled back; a serialization failure runs the handler again
//		}
//		return c.JSON(http.StatusCreated, transfer)
//	})
//
// # A handler's error
//
// Echo answers a handler's error after the handler returns, in its error
// handler. Behind a net/http middleware (echo.WrapMiddleware) that answer
// comes too late: the middleware has already committed and sent what the
// handler wrote, an empty 200 when it wrote nothing. Here the error is
// dealt with inside the attempt, before anything commits:
//
//   - an *echo.HTTPError is answered by Echo's error handler into the
//     attempt's response, whose status then decides, as a net/http
//     handler's would: a 4xx that WithStoredStatus does not store (409,
//     429, ...) and every 5xx roll the transaction back and are sent;
//   - any other error goes to httpadapter.Fail: the transaction rolls
//     back, a serialization failure or a deadlock runs the handler again
//     in a new transaction, an idempotency.Final error is stored, and the
//     rest get the middleware's problem (503 store-failed: nothing was
//     done, retry with the key).
//
// The handler, and the middlewares registered after this one, run once
// per attempt: Echo's next may be called again, with a fresh copy of the
// request body and a response of the attempt's own. Values set with c.Set
// in one attempt are still there in the next.
package echoadapter

import (
	"context"
	"errors"
	"net/http"
	"reflect"

	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/httpadapter"
)

// Option configures Middleware: httpadapter's options (WithMethods,
// WithKeyRequired, WithStoredStatus, WithMaxRequestBytes, ...) and
// WithScope below, which sees the echo.Context.
type Option = httpadapter.Option

type requestKey struct{}

// request is one request's echo.Context, the rest of its chain, and the
// error of a request the middleware passed through.
type request struct {
	c    echo.Context
	next echo.HandlerFunc
	err  error
}

func from(r *http.Request) *request {
	st, _ := r.Context().Value(requestKey{}).(*request)
	return st
}

// WithScope keys requests per scope (the account, the tenant) as
// httpadapter.WithScope does, with the scope read from the echo.Context:
// what the middlewares in front of this one set (c.Get). An empty scope
// refuses the request (500 scope-invalid) rather than share keys between
// accounts.
func WithScope(scope func(c echo.Context) string) Option {
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

// Middleware returns Echo middleware that makes POST and PATCH requests
// with an Idempotency-Key header run at most once per key (see the
// package documentation), on store, a store of any kind:
// idempotency.New's (the handler's Tx), the pgx store, or sqlstore's
// (TxFrom). It panics if store is nil or an option is invalid, as
// httpadapter.Middleware does.
func Middleware[TTx any](store *idempotency.TxStore[TTx], opts ...Option) echo.MiddlewareFunc {
	if store == nil {
		panic("echoadapter: Middleware(nil): want a store")
	}
	attempts := httpadapter.MiddlewareFor(store, opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := from(r)
		c := st.c
		c.SetRequest(r)
		c.SetResponse(echo.NewResponse(w, c.Echo()))
		err := st.next(c)
		switch {
		case err == nil:
		case !inAttempt[TTx](r.Context()):
			st.err = err // a request passed through: Echo answers it as usual
		case isHTTPError(err):
			c.Echo().HTTPErrorHandler(err, c)
		default:
			httpadapter.Fail(r.Context(), err)
		}
	}))
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			st := &request{c: c, next: next}
			req, res := c.Request(), c.Response()
			attempts.ServeHTTP(res, req.WithContext(context.WithValue(req.Context(), requestKey{}, st)))
			c.SetRequest(req)
			c.SetResponse(res)
			return st.err
		}
	}
}

func isHTTPError(err error) bool {
	var he *echo.HTTPError
	return errors.As(err, &he)
}

// inAttempt reports whether ctx is an attempt's, with a transaction:
// not a request the middleware passed through (a GET).
func inAttempt[TTx any](ctx context.Context) bool {
	tx := httpadapter.TxFrom[TTx](ctx)
	return !reflect.ValueOf(&tx).Elem().IsZero()
}

// Tx returns the transaction of the request behind Middleware on the sqlx
// store (idempotency.New): never nil in a handler for the methods the
// middleware handles (POST and PATCH by default), key or no key. With
// another kind of store, use TxFrom.
func Tx(c echo.Context) *sqlx.Tx { return TxFrom[*sqlx.Tx](c) }

// TxFrom is Tx for a store of any transaction type: TxFrom[*sql.Tx](c)
// behind Middleware on sqlstore's store, TxFrom[pgx.Tx](c) on the pgx
// store.
func TxFrom[TTx any](c echo.Context) TTx {
	var zero TTx
	if c == nil || c.Request() == nil {
		return zero
	}
	return httpadapter.TxFrom[TTx](c.Request().Context())
}
