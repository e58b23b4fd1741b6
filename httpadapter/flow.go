package httpadapter

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/exactlyonce/idempotency"
)

// ProblemFlowStopped is the type of the problem (RFC 9457) a FlowHandler
// answers with when its flow stopped with an error that is not final: what
// the flow recorded stays, and a retry with the same key resumes it.
const ProblemFlowStopped = ProblemTypeBase + "flow-stopped" // 503

var problemFlowStopped = Problem{
	Type: ProblemFlowStopped, Title: "Service unavailable", Status: http.StatusServiceUnavailable,
	Detail: "The request stopped part of the way through. What it completed is kept: retry with the same Idempotency-Key after the Retry-After delay, and it goes on from there (the service may also finish it on its own; the retry then gets its result).",
}

// FlowHandler returns a handler that runs flow for each request, under its
// Idempotency-Key and the scope WithScope names, with the middleware's
// answers: a replayed answer carries Idempotent-Replayed: true; the same
// key with another request is 422 (ProblemKeyReused); a request whose twin
// still runs is 409 (ProblemInProgress, with Retry-After) once the store's
// WithWait has passed; a missing or invalid key is 400. The key is
// required: a flow has nothing to resume without one.
//
// decode turns the request (its body read, up to WithMaxRequestBytes)
// into the flow's params, which are its fingerprint; an error from it is a
// 400 with the error's text. respond writes the answer from the flow's
// value, or from its final failure (err is then an *idempotency.FinalError,
// as fresh or replayed: map its Code to a status, 402 for a declined card).
// respond must answer the same way to the same value, since a replay is
// the value sent through it again. Any other error leaves the flow
// resumable and is a 503 (ProblemFlowStopped, with Retry-After).
//
// The options are the middleware's; WithMethods and WithKeyRequired do not
// apply. It panics if store, flow, decode or respond is nil, or an option
// is invalid.
func FlowHandler[P, T, TTx any](store *idempotency.TxStore[TTx], flow *idempotency.Flow[P, T, TTx],
	decode func(r *http.Request, body []byte) (P, error),
	respond func(w http.ResponseWriter, r *http.Request, v T, err error),
	opts ...Option) http.Handler {
	if store == nil || flow == nil || decode == nil || respond == nil {
		panic("httpadapter: FlowHandler needs a store, a flow, a decode and a respond function")
	}
	cfg := defaultConfig()
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(cfg); err != nil {
			panic(err)
		}
	}
	return &flowHandler[P, T, TTx]{store: store, flow: flow, decode: decode, respond: respond, cfg: cfg}
}

type flowHandler[P, T, TTx any] struct {
	store   *idempotency.TxStore[TTx]
	flow    *idempotency.Flow[P, T, TTx]
	decode  func(r *http.Request, body []byte) (P, error)
	respond func(w http.ResponseWriter, r *http.Request, v T, err error)
	cfg     *config
}

func (h *flowHandler[P, T, TTx]) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key, err := requestKey(r.Header)
	switch {
	case errors.Is(err, errNoKey):
		writeFlowProblem(w, problemKeyMissing, 0)
		return
	case err != nil:
		writeFlowProblem(w, problemKeyInvalid(err), 0)
		return
	}
	s := h.store
	if h.cfg.scope != nil {
		scope := h.cfg.scope(r)
		if scope == "" {
			h.cfg.logger.ErrorContext(r.Context(), "httpadapter: the WithScope function returned an empty scope; request refused",
				"method", r.Method, "path", r.URL.Path)
			writeFlowProblem(w, problemScopeInvalid, 0)
			return
		}
		s = s.Scope(scope)
	}
	body, err := readBody(r, h.cfg.maxRequestBytes)
	if err != nil {
		var tooLarge *http.MaxBytesError
		switch {
		case errors.Is(err, errRequestTooLarge), errors.As(err, &tooLarge):
			writeFlowProblem(w, problemRequestTooLarge, 0)
		case !flowClientGone(r):
			writeFlowProblem(w, problemRequestUnreadable, 0)
		}
		return
	}
	params, err := h.decode(r, body)
	if err != nil {
		writeFlowProblem(w, Problem{Type: ProblemRequestInvalid, Title: "Invalid request", Status: http.StatusBadRequest,
			Detail: "The request could not be read as this endpoint's input (" + err.Error() + "). Nothing was done."}, 0)
		return
	}
	res, err := h.flow.Run(r.Context(), s, key, params)
	if res.Replayed {
		w.Header().Set(ReplayedHeader, "true")
	}
	var final *idempotency.FinalError
	switch {
	case err == nil, errors.As(err, &final):
		h.respond(w, r, res.Value, err)
	case errors.Is(err, idempotency.ErrParamsMismatch):
		writeFlowProblem(w, problemKeyReused, 0)
	case errors.Is(err, idempotency.ErrInProgress), errors.Is(err, idempotency.ErrFlowTakenOver):
		// Taken over: another owner finishes the flow, and a retry gets
		// its answer.
		writeFlowProblem(w, problemInProgress, h.cfg.retryAfter)
	case errors.Is(err, idempotency.ErrInvalidScope):
		h.cfg.logger.ErrorContext(r.Context(), "httpadapter: invalid scope; request refused", "method", r.Method, "path", r.URL.Path, "err", err)
		writeFlowProblem(w, problemScopeInvalid, 0)
	case errors.Is(err, idempotency.ErrInvalidKey):
		writeFlowProblem(w, problemKeyInvalid(err), 0)
	case errors.Is(err, idempotency.ErrTransactionEnded):
		h.cfg.logger.ErrorContext(r.Context(), "httpadapter: the database ended a step's transaction while it ran and the step went on; its later writes may have committed outside the transaction",
			"method", r.Method, "path", r.URL.Path, "err", err)
		writeFlowProblem(w, problemTransactionEnded, 0)
	case flowClientGone(r):
		// Nobody is listening; the flow keeps what it recorded.
	default:
		h.cfg.logger.WarnContext(r.Context(), "httpadapter: flow stopped; a retry with the same key resumes it",
			"method", r.Method, "path", r.URL.Path, "err", err)
		writeFlowProblem(w, problemFlowStopped, h.cfg.retryAfter)
	}
}

// writeFlowProblem sends p as an application/problem+json answer, with
// Retry-After when retryAfter is positive, as the middleware's problems
// are sent.
func writeFlowProblem(w http.ResponseWriter, p Problem, retryAfter time.Duration) {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err) // a Problem of strings always encodes
	}
	h := w.Header()
	h.Set("Content-Type", ProblemContentType)
	h.Set("Cache-Control", "no-store")
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((retryAfter+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(p.Status)
	_, _ = w.Write(b)
}

// flowClientGone reports whether the request's context ended because the
// client went away: net/http cancels it with a plain context.Canceled when
// the connection closes.
func flowClientGone(r *http.Request) bool {
	ctx := r.Context()
	return ctx.Err() != nil && errors.Is(context.Cause(ctx), context.Canceled)
}

// ProblemRequestInvalid is the type of the problem a FlowHandler answers
// with when its decode function refuses the request.
const ProblemRequestInvalid = ProblemTypeBase + "request-invalid" // 400
