package httpadapter

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// ProblemTypeBase prefixes the type of every problem the middleware answers
// with; the fragment names the section of this package's documentation
// that explains it.
const ProblemTypeBase = "https://github.com/exactlyonce/idempotency/tree/main/httpadapter#"

// The types of the problems (RFC 9457) the middleware answers with. Clients
// may match on them.
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
)

// Problem is an RFC 9457 problem detail, the body of every answer the
// middleware gives of its own.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// ProblemContentType is the media type of a Problem.
const ProblemContentType = "application/problem+json"

func writeProblem(w http.ResponseWriter, p Problem, retryAfter time.Duration) {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err) // a Problem of strings always encodes
	}
	h := w.Header()
	h.Set("Content-Type", ProblemContentType)
	h.Set("Cache-Control", "no-store")
	if retryAfter > 0 {
		secs := int64((retryAfter + time.Second - 1) / time.Second)
		h.Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	w.WriteHeader(p.Status)
	_, _ = w.Write(b)
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
		Type: ProblemInProgress, Title: "A request with this Idempotency-Key is in progress", Status: http.StatusConflict,
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
		Detail: "The database ended the request's transaction while the handler ran (a deadlock, say), and the handler went on without noticing, so writes it made after that may have taken effect outside the transaction. Nothing was stored under the Idempotency-Key. Retrying is not safe: do not retry automatically; check what the request did first.",
	}
	problemHandlerPanic = Problem{
		Type: ProblemHandlerPanic, Title: "Internal server error", Status: http.StatusInternalServerError,
		Detail: "The request failed and was rolled back; nothing was stored. It is safe to retry (with the same Idempotency-Key, if the request had one).",
	}
	problemOutcomeUnknown = Problem{
		Type: ProblemOutcomeUnknown, Title: "Outcome unknown", Status: http.StatusServiceUnavailable,
		Detail: "The connection to the database failed while committing, so whether the operation took effect is unknown. Retry with the same Idempotency-Key: you will get its result if it committed, and it will run if it did not.",
	}
	problemStoreFailed = Problem{
		Type: ProblemStoreFailed, Title: "Service unavailable", Status: http.StatusServiceUnavailable,
		Detail: "The request could not be completed and was rolled back; nothing was stored. It is safe to retry (with the same Idempotency-Key, if the request had one).",
	}
	problemDeadlineExceeded = Problem{
		Type: ProblemDeadlineExceeded, Title: "Request timed out", Status: http.StatusServiceUnavailable,
		Detail: "The service's time limit for this request ran out before it finished (it may have been waiting for another request with the same Idempotency-Key), so it was rolled back and nothing was stored. It is safe to retry with the same Idempotency-Key after the Retry-After delay.",
	}
)

func problemKeyInvalid(err error) Problem {
	return Problem{
		Type: ProblemKeyInvalid, Title: "Invalid Idempotency-Key header", Status: http.StatusBadRequest,
		Detail: "The Idempotency-Key header must be one key of 1 to 255 printable ASCII characters, bare or as a quoted string (" + err.Error() + "). Nothing was done.",
	}
}
