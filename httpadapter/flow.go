package httpadapter

import (
	"errors"
	"net/http"

	"github.com/exactlyonce/idempotency"
)

// ProblemFlowStopped is the type of the problem (RFC 9457) a FlowHandler
// answers with when its flow stopped with an error that is not final: what
// the flow recorded stays, and a retry with the same key resumes it.
const ProblemFlowStopped = ProblemTypeBase + "flow-stopped" // 503

var problemFlowStopped = Problem{
	Type: ProblemFlowStopped, Title: "Service unavailable", Status: http.StatusServiceUnavailable, RetryAfter: DefaultRetryAfter,
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
	cfg := newConfig(opts)
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
	if err != nil {
		h.cfg.write(w, ProblemFor(err)) // 400 key-missing or key-invalid
		return
	}
	s, ok := scoped(h.cfg, h.store, r)
	if !ok {
		h.cfg.write(w, problemScopeInvalid)
		return
	}
	body, err := readBody(r, h.cfg.maxRequestBytes)
	if err != nil {
		h.cfg.write(w, ProblemFor(err)) // 413 request-too-large or 400 request-unreadable
		return
	}
	params, err := h.decode(r, body)
	if err != nil {
		h.cfg.write(w, Problem{Type: ProblemRequestInvalid, Title: "Invalid request", Status: http.StatusBadRequest,
			Detail: "The request could not be read as this endpoint's input (" + err.Error() + "). Nothing was done."})
		return
	}
	res, err := h.flow.Run(r.Context(), s, key, params)
	if res.Replayed {
		w.Header().Set(ReplayedHeader, "true")
	}
	var final *idempotency.FinalError
	if err == nil || errors.As(err, &final) {
		h.respond(w, r, res.Value, err)
		return
	}
	p := ProblemFor(err)
	switch {
	case p.Type != ProblemStoreFailed:
	case r.Context().Err() != nil:
		// Answered even when the client is gone: a server that cancels its
		// requests on shutdown has clients still waiting.
		p = ProblemFor(r.Context().Err())
	default:
		// fn's own error, or the store's: the flow keeps what it
		// recorded, and a retry resumes it.
		h.cfg.logger.WarnContext(r.Context(), "httpadapter: flow stopped; a retry with the same key resumes it",
			"method", r.Method, "path", r.URL.Path, "err", err)
		p = problemFlowStopped
	}
	if p.Status >= 500 && p.Type != ProblemFlowStopped {
		h.cfg.logger.ErrorContext(r.Context(), "httpadapter: flow failed", "method", r.Method, "path", r.URL.Path, "problem", p.Type, "err", err)
	}
	h.cfg.write(w, p)
}

// ProblemRequestInvalid is the type of the problem a FlowHandler answers
// with when its decode function refuses the request.
const ProblemRequestInvalid = ProblemTypeBase + "request-invalid" // 400
