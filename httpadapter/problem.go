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

// ProblemTypeBase prefixes the type of every problem the middleware answers
// with; the fragment names the section of this package's documentation
// that explains it.
const ProblemTypeBase = "https://github.com/exactlyonce/idempotency/tree/main/httpadapter#"

// The types of the problems (RFC 9457) the middleware answers with, and
// ProblemFor gives. Clients may match on them.
const (
	ProblemKeyMissing        = ProblemTypeBase + "key-missing"        // 400
	ProblemKeyInvalid        = ProblemTypeBase + "key-invalid"        // 400
	ProblemKeyReused         = ProblemTypeBase + "key-reused"         // 422
	ProblemInProgress        = ProblemTypeBase + "in-progress"        // 409
	ProblemRequestTooLarge   = ProblemTypeBase + "request-too-large"  // 413
	ProblemRequestUnreadable = ProblemTypeBase + "request-unreadable" // 400
	ProblemResponseTooLarge  = ProblemTypeBase + "response-too-large" // 500
	ProblemStreaming         = ProblemTypeBase + "streaming"          // 500
	ProblemHandlerPanic      = ProblemTypeBase + "handler-panic"      // 500
	ProblemScopeInvalid      = ProblemTypeBase + "scope-invalid"      // 500
	ProblemTransactionEnded  = ProblemTypeBase + "transaction-ended"  // 500
	ProblemOutcomeUnknown    = ProblemTypeBase + "outcome-unknown"    // 503
	ProblemStoreFailed       = ProblemTypeBase + "store-failed"       // 503
	ProblemDeadlineExceeded  = ProblemTypeBase + "deadline-exceeded"  // 503
	ProblemRequestCanceled   = ProblemTypeBase + "request-canceled"   // 503
	ProblemFinalFailure      = ProblemTypeBase + "final-failure"      // 422
	ProblemFingerprintFailed = ProblemTypeBase + "fingerprint-failed" // 500
)

// Problem is an RFC 9457 problem detail, the body of every answer the
// middleware gives of its own. ProblemFor makes one from an error, and
// WriteProblem sends it.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`

	// Code is the code of a stored failure (idempotency.FinalError's
	// Code), for clients to match on; omitted when empty.
	Code string `json:"code,omitempty"`

	// RetryAfter, when positive, is sent as the Retry-After header, in
	// whole seconds rounded up. It is not part of the body.
	RetryAfter time.Duration `json:"-"`
}

// ProblemContentType is the media type of a Problem.
const ProblemContentType = "application/problem+json"

// DefaultRetryAfter is the RetryAfter of the problems that a retry can
// resolve (409 in-progress, and the 503s), as ProblemFor gives them;
// WithRetryAfter sets the middleware's.
const DefaultRetryAfter = time.Second

// WriteProblem sends p as an application/problem+json answer with status
// p.Status, Cache-Control: no-store, and Retry-After when p.RetryAfter is
// positive. Like http.ResponseWriter.WriteHeader, it panics if p.Status is
// not a valid status code (ProblemFor(nil) is the zero Problem).
func WriteProblem(w http.ResponseWriter, p Problem) {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err) // a Problem of strings and an int always encodes
	}
	h := w.Header()
	h.Set("Content-Type", ProblemContentType)
	h.Set("Cache-Control", "no-store")
	if p.RetryAfter > 0 {
		secs := int64((p.RetryAfter + time.Second - 1) / time.Second)
		h.Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	w.WriteHeader(p.Status)
	_, _ = w.Write(b)
}

// ProblemFor is the answer to a request that failed with err: the table the
// middleware answers its own failures by, for a service that calls
// idempotency.Run (or Do, or InTx) from its own handler, in Gin, Echo or
// behind gRPC-Gateway, and wants the same answers:
//
//	res, err := idempotency.Run(ctx, store, key, params, fn)
//	if err != nil {
//		httpadapter.WriteProblem(w, httpadapter.ProblemFor(err))
//		return
//	}
//
// It matches err with errors.Is and errors.As, in this order:
//
//	err                                  status  type                 Retry-After
//	*http.MaxBytesError (a body over     413     request-too-large
//	  http.MaxBytesReader's limit)
//	idempotency.ErrTransactionEnded      500     transaction-ended
//	idempotency.ErrParamsMismatch        422     key-reused
//	idempotency.ErrInProgress,           409     in-progress          yes
//	  idempotency.ErrFlowTakenOver
//	idempotency.ErrInvalidScope          500     scope-invalid
//	idempotency.ErrInvalidKey            400     key-invalid
//	idempotency.ErrOutcomeUnknown        503     outcome-unknown      yes
//	idempotency.ErrBadParams             500     fingerprint-failed
//	*idempotency.FinalError (fn's own,   422     final-failure, with
//	  or replayed)                               its Code as "code"
//	ErrResponseTooLarge                  500     response-too-large
//	ErrStreaming                         500     streaming
//	context.DeadlineExceeded             503     deadline-exceeded    yes
//	context.Canceled                     503     request-canceled     yes
//	any other error (a store failure,    503     store-failed         yes
//	  retries run out, fn's own error)
//
// The Retry-After is DefaultRetryAfter (the middleware and FlowHandler
// send their WithRetryAfter instead). ProblemFor(nil) is the zero
// Problem. A FinalError's message is not in the answer (it may say more
// than a client should see); its Code is. Without a key (InTx), an
// unknown outcome is not safe to retry: the middleware then sends
// outcome-unknown without Retry-After, and tells the client to send a key.
//
// A context error is the request's own only when the request's context
// has ended: a driver error that ctx's end caused (a canceled statement)
// is not a context error. The middleware checks the request's context
// after ProblemFor and answers by it; do the same:
//
//	p := httpadapter.ProblemFor(err)
//	if p.Type == httpadapter.ProblemStoreFailed && r.Context().Err() != nil {
//		p = httpadapter.ProblemFor(r.Context().Err())
//	}
//
// Those that mean the service is at fault (500 scope-invalid,
// transaction-ended, fingerprint-failed, and 503 store-failed) are worth
// logging.
func ProblemFor(err error) Problem {
	var (
		rb    *rollbackError
		final *idempotency.FinalError
	)
	switch {
	case err == nil:
		return Problem{}
	case errors.As(err, &rb) && rb.reason == panicked:
		return problemHandlerPanic
	case errors.Is(err, errNoKey):
		return problemKeyMissing
	case errors.Is(err, errRequestTooLarge), errors.As(err, new(*http.MaxBytesError)):
		return problemRequestTooLarge
	case errors.Is(err, errRequestUnreadable):
		return problemRequestUnreadable
	case errors.Is(err, idempotency.ErrTransactionEnded):
		return problemTransactionEnded
	case errors.Is(err, idempotency.ErrParamsMismatch):
		return problemKeyReused
	case errors.Is(err, idempotency.ErrInProgress), errors.Is(err, idempotency.ErrFlowTakenOver):
		// A flow taken over: its new owner finishes it, and a retry gets
		// the answer.
		return problemInProgress
	case errors.Is(err, idempotency.ErrInvalidScope):
		// Before ErrInvalidKey, which it also matches: the scope is the
		// service's doing, not the client's key.
		return problemScopeInvalid
	case errors.Is(err, idempotency.ErrInvalidKey):
		return problemKeyInvalid(err)
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		return problemOutcomeUnknown
	case errors.Is(err, idempotency.ErrBadParams):
		return problemFingerprintFailed
	case errors.As(err, &final):
		p := problemFinalFailure
		p.Code = final.Code
		return p
	case errors.Is(err, ErrResponseTooLarge):
		return problemResponseTooLarge
	case errors.Is(err, ErrStreaming):
		return problemStreaming
	case errors.Is(err, context.DeadlineExceeded):
		return problemDeadlineExceeded
	case errors.Is(err, context.Canceled):
		return problemRequestCanceled
	}
	return problemStoreFailed
}

var (
	problemKeyMissing = Problem{
		Type: ProblemKeyMissing, Title: "Idempotency-Key header required", Status: http.StatusBadRequest,
		Detail: "This endpoint requires an Idempotency-Key header. Generate a unique key (a UUID) for each new operation and send the same key when you retry it.",
	}
	problemKeyReused = Problem{
		Type: ProblemKeyReused, Title: "Idempotency-Key reused with a different request", Status: http.StatusUnprocessableEntity,
		Detail: "This Idempotency-Key was already used with another method, path, query or body. Do not retry with this key: send a new key for a new operation, or resend the original request unchanged.",
	}
	problemInProgress = Problem{
		Type: ProblemInProgress, Title: "A request with this Idempotency-Key is in progress", Status: http.StatusConflict, RetryAfter: DefaultRetryAfter,
		Detail: "Another request with the same Idempotency-Key is still being processed. Retry with the same key after the Retry-After delay: you will get its result.",
	}
	problemRequestTooLarge = Problem{
		Type: ProblemRequestTooLarge, Title: "Request body too large", Status: http.StatusRequestEntityTooLarge,
		Detail: "The request body exceeds the limit for idempotent requests. Nothing was done; send a smaller body.",
	}
	problemRequestUnreadable = Problem{
		Type: ProblemRequestUnreadable, Title: "Request body could not be read", Status: http.StatusBadRequest,
		Detail: "Reading the request body failed before it was complete, so the request was not run. Nothing was done; send the request again (with the same Idempotency-Key).",
	}
	problemResponseTooLarge = Problem{
		Type: ProblemResponseTooLarge, Title: "Response too large to store", Status: http.StatusInternalServerError,
		Detail: "The response exceeds the size that can be stored for idempotent replays, so the operation was rolled back and nothing was stored. Retrying will fail the same way; the service must be fixed or the limit raised.",
	}
	problemStreaming = Problem{
		Type: ProblemStreaming, Title: "Streaming responses are not supported for idempotent requests", Status: http.StatusInternalServerError,
		Detail: "The handler tried to stream (flush or hijack) its response, which cannot be stored for replays, so the operation was rolled back and nothing was stored. Retrying will fail the same way; the service must be fixed.",
	}
	problemScopeInvalid = Problem{
		Type: ProblemScopeInvalid, Title: "Idempotency scope unavailable", Status: http.StatusInternalServerError,
		Detail: "The service could not tell whose Idempotency-Key this is (the request's scope was empty or too long), so it refused the request rather than share keys between accounts. Nothing was done. Retrying will fail the same way until the service is fixed.",
	}
	problemTransactionEnded = Problem{
		Type: ProblemTransactionEnded, Title: "Transaction ended while the request ran", Status: http.StatusInternalServerError,
		Detail: "The request's transaction ended before its Idempotency-Key was saved: the handler committed or rolled it back itself, or the database ended it (a deadlock, say) and the handler went on without noticing. Writes the handler made may have taken effect without the key. Retrying is not safe: do not retry automatically; check what the request did first.",
	}
	problemHandlerPanic = Problem{
		Type: ProblemHandlerPanic, Title: "Internal server error", Status: http.StatusInternalServerError,
		Detail: "The request failed and was rolled back; nothing was stored. It is safe to retry (with the same Idempotency-Key, if the request had one).",
	}
	problemOutcomeUnknown = Problem{
		Type: ProblemOutcomeUnknown, Title: "Outcome unknown", Status: http.StatusServiceUnavailable, RetryAfter: DefaultRetryAfter,
		Detail: "The connection to the database failed while committing, so whether the operation took effect is unknown. Retry with the same Idempotency-Key: you will get its result if it committed, and it will run if it did not.",
	}
	problemStoreFailed = Problem{
		Type: ProblemStoreFailed, Title: "Service unavailable", Status: http.StatusServiceUnavailable, RetryAfter: DefaultRetryAfter,
		Detail: "The request could not be completed and was rolled back; nothing was stored. It is safe to retry (with the same Idempotency-Key, if the request had one).",
	}
	problemRequestCanceled = Problem{
		Type: ProblemRequestCanceled, Title: "Request canceled", Status: http.StatusServiceUnavailable, RetryAfter: DefaultRetryAfter,
		Detail: "The request was canceled before it finished (the service may be shutting down), so it was rolled back and nothing was stored. It is safe to retry (with the same Idempotency-Key, if the request had one) after the Retry-After delay.",
	}
	problemFinalFailure = Problem{
		Type: ProblemFinalFailure, Title: "Request failed", Status: http.StatusUnprocessableEntity,
		Detail: "The request failed for good (see its code, if any) and was rolled back. A retry gets this answer again (with the same Idempotency-Key, the failure is stored and replayed): do not retry it; send a new key for a new operation.",
	}
	problemFingerprintFailed = Problem{
		Type: ProblemFingerprintFailed, Title: "Request cannot be fingerprinted", Status: http.StatusInternalServerError,
		Detail: "The service could not compute what identifies this request under its Idempotency-Key (its fingerprint function returned a value that cannot be encoded), so it refused the request. Nothing was done. Retrying will fail the same way until the service is fixed.",
	}
	problemDeadlineExceeded = Problem{
		Type: ProblemDeadlineExceeded, Title: "Request timed out", Status: http.StatusServiceUnavailable, RetryAfter: DefaultRetryAfter,
		Detail: "The service's time limit for this request ran out before it finished (it may have been waiting for another request with the same Idempotency-Key), so it was rolled back and nothing was stored. It is safe to retry with the same Idempotency-Key after the Retry-After delay.",
	}
)

func problemKeyInvalid(err error) Problem {
	return Problem{
		Type: ProblemKeyInvalid, Title: "Invalid Idempotency-Key header", Status: http.StatusBadRequest,
		Detail: "The Idempotency-Key header must be one key of 1 to 255 printable ASCII characters, bare or as a quoted string (" + err.Error() + "). Nothing was done.",
	}
}
