package httpadapter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

// TestProblemFor checks each row of ProblemFor's table, what WriteProblem
// sends for it, and that the middleware answers the same error with the
// same problem: there is one table.
func TestProblemFor(t *testing.T) {
	_, badKey := ParseKey(`"unterminated`)
	_, badParams := idempotency.Fingerprint(make(chan int))
	m := Middleware(sqliteEnv(t).store(t))(api()).(*middleware[*sqlx.Tx])
	for _, tc := range []struct {
		err    error
		status int
		typ    string
		retry  bool   // a Retry-After comes along
		code   string // a final failure's
	}{
		{&http.MaxBytesError{Limit: 10}, 413, ProblemRequestTooLarge, false, ""},
		{fmt.Errorf("%w: key %q: gone", idempotency.ErrTransactionEnded, "k"), 500, ProblemTransactionEnded, false, ""},
		{fmt.Errorf("%w: key %q", idempotency.ErrParamsMismatch, "k"), 422, ProblemKeyReused, false, ""},
		{fmt.Errorf("%w: key %q (waited 5s)", idempotency.ErrInProgress, "k"), 409, ProblemInProgress, true, ""},
		{fmt.Errorf("%w: the scope is 300 bytes", idempotency.ErrInvalidScope), 500, ProblemScopeInvalid, false, ""},
		{badKey, 400, ProblemKeyInvalid, false, ""},
		{fmt.Errorf("%w: key %q: broken pipe", idempotency.ErrOutcomeUnknown, "k"), 503, ProblemOutcomeUnknown, true, ""},
		{badParams, 500, ProblemFingerprintFailed, false, ""},
		{idempotency.FinalCode("card_declined", errors.New("the card was declined")), 422, ProblemFinalFailure, false, "card_declined"},
		{idempotency.Final(errors.New("no code")), 422, ProblemFinalFailure, false, ""},
		{ErrResponseTooLarge, 500, ProblemResponseTooLarge, false, ""},
		{ErrStreaming, 500, ProblemStreaming, false, ""},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), 503, ProblemDeadlineExceeded, true, ""},
		{context.Canceled, 503, ProblemRequestCanceled, true, ""},
		{errors.New("dial tcp: connection refused"), 503, ProblemStoreFailed, true, ""},
		{fmt.Errorf("idempotency: gave up after 10 retries: %w", errors.New("pq: could not serialize access")), 503, ProblemStoreFailed, true, ""},
	} {
		p := ProblemFor(tc.err)
		if p.Status != tc.status || p.Type != tc.typ || p.Code != tc.code || (p.RetryAfter > 0) != tc.retry {
			t.Errorf("ProblemFor(%v) = %+v; want %d %s, code %q, Retry-After %v", tc.err, p, tc.status, tc.typ, tc.code, tc.retry)
			continue
		}
		w := httptest.NewRecorder()
		WriteProblem(w, p)
		got := response{status: w.Code, header: w.Header(), body: w.Body.Bytes()}
		wantProblem(t, got, tc.status, tc.typ)
		if ra := got.header.Get("Retry-After"); (ra == "1") != tc.retry || (ra == "") == tc.retry {
			t.Errorf("%v: Retry-After %q, want one: %v", tc.err, ra, tc.retry)
		}
		if cc := got.header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("%v: Cache-Control %q", tc.err, cc)
		}
		if tc.code != "" && !bytes.Contains(got.body, []byte(`"code":"`+tc.code+`"`)) {
			t.Errorf("%v: the body has no code: %s", tc.err, got.body)
		}
		if tc.code == "" && bytes.Contains(got.body, []byte(`"code"`)) {
			t.Errorf("%v: the body has a code: %s", tc.err, got.body)
		}

		// The middleware answers the error the same way.
		mw := httptest.NewRecorder()
		m.fail(mw, httptest.NewRequest(http.MethodPost, "/x", nil), tc.err)
		if mw.Code != w.Code || !bytes.Equal(mw.Body.Bytes(), w.Body.Bytes()) || mw.Header().Get("Retry-After") != w.Header().Get("Retry-After") {
			t.Errorf("%v: the middleware answered %d %s (Retry-After %q), ProblemFor %d %s", tc.err,
				mw.Code, mw.Body, mw.Header().Get("Retry-After"), w.Code, w.Body)
		}
	}
	if p := ProblemFor(nil); p != (Problem{}) {
		t.Errorf("ProblemFor(nil) = %+v, want the zero Problem", p)
	}

	// The middleware's Retry-After is WithRetryAfter's.
	slow := Middleware(sqliteEnv(t).store(t), WithRetryAfter(3*1e9))(api()).(*middleware[*sqlx.Tx])
	w := httptest.NewRecorder()
	slow.fail(w, httptest.NewRequest(http.MethodPost, "/x", nil), idempotency.ErrInProgress)
	if ra := w.Header().Get("Retry-After"); ra != "3" {
		t.Errorf("Retry-After %q, want WithRetryAfter's 3", ra)
	}
}
