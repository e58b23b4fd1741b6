package httpadapter

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

const chargeBody = `{"ref":"r1","amount":100}`

func TestReplayByteForByte(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), nil, nil)
		url := srv.URL + "/accounts/a1/charges"
		first := post(t, nil, url, "k1", chargeBody)
		if first.status != http.StatusCreated || first.replayed() {
			t.Fatalf("first: %d replayed=%v %s", first.status, first.replayed(), first.body)
		}
		if first.header.Get("Set-Cookie") == "" || first.header.Get("X-Not-Replayed") == "" {
			t.Errorf("the first answer lost the handler's headers: %v", first.header)
		}
		// The same key, bare and as a quoted sf-string, replays.
		for _, key := range []string{"k1", `"k1"`} {
			again := post(t, nil, url, key, chargeBody)
			if !again.replayed() {
				t.Fatalf("key %s: not a replay: %d %s", key, again.status, again.body)
			}
			if again.status != first.status || !bytes.Equal(again.body, first.body) {
				t.Errorf("replay %d %q, first %d %q", again.status, again.body, first.status, first.body)
			}
			for _, h := range []string{"Content-Type", "Location"} {
				if again.header.Get(h) != first.header.Get(h) {
					t.Errorf("replayed %s %q, first %q", h, again.header.Get(h), first.header.Get(h))
				}
			}
			if again.header.Get("Set-Cookie") != "" || again.header.Get("X-Not-Replayed") != "" {
				t.Errorf("replay carries headers off the allow-list: %v", again.header)
			}
		}
		if n := e.charges(t, "r1"); n != 1 {
			t.Errorf("%d charges, want 1", n)
		}
	})
}

// TestWhichStatusesAreStored: an answer that says the work was done, or
// was refused for good (a declined card, a forbidden or missing resource),
// is stored with its writes; one that says the endpoint never began or
// should be tried again later (a validation 400, an expired token's 401, 408,
// 409, a misdirected 421, 423, 425, 429) rolls back and stores nothing, like
// a 5xx: a client that refreshes its token retries with the same key.
func TestWhichStatusesAreStored(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), nil, nil)
		stored := map[int]bool{
			200: true, 201: true, 202: true, 204: true,
			400: false, 401: false, 402: true, 403: true, 404: true, 408: false, 409: false, 410: true,
			421: false, 422: true, 423: false, 425: false, 429: false, 500: false, 503: false,
		}
		want := 0
		for code, keep := range stored {
			ref := fmt.Sprint("s", code)
			url := fmt.Sprintf("%s/status/%d", srv.URL, code)
			body := fmt.Sprintf(`{"ref":%q,"amount":1}`, ref)
			first := post(t, nil, url, ref, body)
			again := post(t, nil, url, ref, body)
			if first.status != code || again.status != code {
				t.Errorf("%d: answered %d, then %d", code, first.status, again.status)
				continue
			}
			if again.replayed() != keep || bytes.Equal(first.body, again.body) != keep {
				t.Errorf("%d: stored=%v, but the retry was replayed=%v with body %s after %s", code, keep, again.replayed(), again.body, first.body)
			}
			if n := e.charges(t, ref); keep && n != 1 || !keep && n != 0 {
				t.Errorf("%d: %d charges, want %d", code, n, map[bool]int{true: 1}[keep])
			}
			if keep {
				want++
			}
		}
		if k := e.keys(t); k != want {
			t.Errorf("%d keys, want %d", k, want)
		}
	})
}

// TestCorrectedRetryAfterValidationError: a 400 does not burn the key, so
// the client can fix its request and send it with the same key.
func TestCorrectedRetryAfterValidationError(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), nil, nil)
		url := srv.URL + "/accounts/a1/charges"
		if r := post(t, nil, url, "k", `{"ref":"fix","amount":-1}`); r.status != http.StatusBadRequest {
			t.Fatalf("invalid: %d %s", r.status, r.body)
		}
		if n, k := e.charges(t, "fix"), e.keys(t); n != 0 || k != 0 {
			t.Fatalf("a 400 left %d charges and %d keys", n, k)
		}
		r := post(t, nil, url, "k", `{"ref":"fix","amount":5}`)
		if r.status != http.StatusCreated || r.replayed() {
			t.Fatalf("corrected: %d replayed=%v %s", r.status, r.replayed(), r.body)
		}
		if n := e.charges(t, "fix"); n != 1 {
			t.Errorf("%d charges, want 1", n)
		}
	})
}

// TestWithStoredStatus: the option chooses which 4xx and 5xx are stored;
// 2xx are stored whatever it says.
func TestWithStoredStatus(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		own409 := WithStoredStatus(func(code int) bool {
			return code == http.StatusConflict || code != http.StatusNotFound && DefaultStoredStatus(code)
		})
		for _, tc := range []struct {
			opts   []Option
			stored map[int]bool
		}{
			{[]Option{own409}, map[int]bool{409: true, 404: false, 402: true, 400: false, 503: false, 201: true}},
			{[]Option{WithStoredStatus(func(int) bool { return false })}, map[int]bool{201: true, 402: false}},
			{[]Option{own409, WithStoreServerErrors()}, map[int]bool{409: true, 404: false, 503: true}},
		} {
			srv := e.server(t, e.store(t), tc.opts, nil)
			for code, keep := range tc.stored {
				key := randomID()
				url := fmt.Sprintf("%s/status/%d", srv.URL, code)
				post(t, nil, url, key, `{"ref":"o"}`)
				if again := post(t, nil, url, key, `{"ref":"o"}`); again.status != code || again.replayed() != keep {
					t.Errorf("%d: retry %d replayed=%v, want stored=%v", code, again.status, again.replayed(), keep)
				}
			}
		}
	})
}

func TestExtraReplayHeaders(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), []Option{WithReplayHeaders("x-not-replayed")}, nil)
		url := srv.URL + "/accounts/a1/charges"
		post(t, nil, url, "k", chargeBody)
		again := post(t, nil, url, "k", chargeBody)
		if !again.replayed() || again.header.Get("X-Not-Replayed") != "1" || again.header.Get("Set-Cookie") != "" {
			t.Errorf("replay headers %v", again.header)
		}
	})
}

// TestReplayKeepsTheBodysMeaning: a replay repeats the headers that say
// how to read its body, so a gzip answer replays as gzip, not as bytes the
// client cannot read.
func TestReplayKeepsTheBodysMeaning(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), nil, nil)
		// A client that leaves the gzip to the test.
		c := &http.Client{Transport: &http.Transport{DisableCompression: true}}
		first := post(t, c, srv.URL+"/gzip", "k", `{"ref":"z"}`)
		again := post(t, c, srv.URL+"/gzip", "k", `{"ref":"z"}`)
		if first.status != http.StatusCreated || !again.replayed() || !bytes.Equal(first.body, again.body) {
			t.Fatalf("first %d; again %d replayed=%v", first.status, again.status, again.replayed())
		}
		for _, h := range []string{"Content-Type", "Content-Encoding", "Content-Language", "Content-Disposition", "Content-Location", "Vary"} {
			if got, want := again.header.Get(h), first.header.Get(h); got != want || want == "" {
				t.Errorf("replayed %s: %q, first %q", h, got, want)
			}
		}
		zr, err := gzip.NewReader(bytes.NewReader(again.body))
		if err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(zr); err != nil || !strings.HasPrefix(string(b), `{"ref":"z"`) {
			t.Errorf("replayed body %q, %v", b, err)
		}
		if n := e.charges(t, "z"); n != 1 {
			t.Errorf("%d charges, want 1", n)
		}
	})
}

func TestWithoutKey(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), nil, nil)
		url := srv.URL + "/accounts/a1/charges"
		for range 2 {
			if r := post(t, nil, url, "", chargeBody); r.status != http.StatusCreated || r.replayed() {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}
		if n, k := e.charges(t, "r1"), e.keys(t); n != 2 || k != 0 {
			t.Errorf("%d charges and %d keys, want 2 and 0", n, k)
		}
		// A keyless 5xx rolls back too.
		if r := post(t, nil, srv.URL+"/fail", "", `{"ref":"f"}`); r.status != http.StatusServiceUnavailable {
			t.Errorf("fail: %d %s", r.status, r.body)
		}
		if n := e.charges(t, "f"); n != 0 {
			t.Errorf("a keyless 5xx left %d charges", n)
		}

		required := e.server(t, e.store(t), []Option{WithKeyRequired()}, nil)
		wantProblem(t, post(t, nil, required.URL+"/accounts/a1/charges", "", `{"ref":"req","amount":1}`), 400, ProblemKeyMissing)
		if n := e.charges(t, "req"); n != 0 {
			t.Errorf("a refused request left %d charges", n)
		}
	})
}

func TestPassThrough(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		get := func(srv *httptest.Server, method string) string {
			req, _ := http.NewRequest(method, srv.URL+"/accounts/a1/charges/c1", nil)
			req.Header.Set(KeyHeader, "k")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			return b.String()
		}
		srv := e.server(t, e.store(t), nil, nil)
		if got := get(srv, http.MethodGet); got != "tx=false" {
			t.Errorf("GET: %q, want it untouched", got)
		}
		if got := get(srv, http.MethodPut); got != "tx=false" {
			t.Errorf("PUT: %q, want it untouched", got)
		}
		withPut := e.server(t, e.store(t), []Option{WithMethods(http.MethodPut)}, nil)
		if got := get(withPut, http.MethodPut); got != "tx=true" {
			t.Errorf("PUT with WithMethods(PUT): %q", got)
		}
		if e.keys(t) != 1 {
			t.Errorf("%d keys, want PUT's", e.keys(t))
		}
	})
}

// TestPerRoute applies the middleware to one route of a ServeMux, as a
// chi-style router would, and checks that the route's path values survive.
func TestPerRoute(t *testing.T) {
	e := sqliteEnv(t)
	mw := Middleware(e.store(t))
	mux := http.NewServeMux()
	mux.Handle("POST /v1/accounts/{acct}/charges", mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := insert(r, chargeIn{Ref: r.PathValue("acct"), Amount: 1}); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "acct=%s id=%s", r.PathValue("acct"), randomID())
	})))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	first := post(t, nil, srv.URL+"/v1/accounts/a9/charges", "k", "")
	again := post(t, nil, srv.URL+"/v1/accounts/a9/charges", "k", "")
	if first.status != 200 || !strings.HasPrefix(string(first.body), "acct=a9 ") || !again.replayed() || !bytes.Equal(first.body, again.body) {
		t.Fatalf("first %d %s; again replayed=%v %s", first.status, first.body, again.replayed(), again.body)
	}
	if n := e.charges(t, "a9"); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}

func TestProblems(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t, idempotency.WithWait(100*time.Millisecond)), []Option{WithMaxRequestBytes(1024)}, nil)
		url := srv.URL + "/accounts/a1/charges"
		for _, key := range []string{strings.Repeat("k", 256), "ключ", `"unterminated`, `"a\b"`, `"a"b`, `""`} {
			wantProblem(t, post(t, nil, url, key, chargeBody), 400, ProblemKeyInvalid)
		}
		wantProblem(t, post(t, nil, url, "", chargeBody, KeyHeader, "a", KeyHeader, "b"), 400, ProblemKeyInvalid)
		wantProblem(t, post(t, nil, url, "big", `{"ref":"`+strings.Repeat("x", 2000)+`"}`), 413, ProblemRequestTooLarge)

		// 422: the key was used for another request (body, path or query).
		post(t, nil, url, "k", chargeBody)
		wantProblem(t, post(t, nil, url, "k", `{"ref":"r1","amount":200}`), 422, ProblemKeyReused)
		wantProblem(t, post(t, nil, url+"?x=1", "k", chargeBody), 422, ProblemKeyReused)
		wantProblem(t, post(t, nil, srv.URL+"/accounts/a2/charges", "k", chargeBody), 422, ProblemKeyReused)

		// 409: a twin still runs past the wait bound. With optimistic
		// transactions (TiDB) no twin waits: it runs the handler too, and
		// the first COMMIT wins (the conformance suite's TwinsMeetAtCommit).
		if e.Optimistic() {
			return
		}
		e = e.shortBusy(t)
		srv = e.server(t, e.store(t, idempotency.WithWait(100*time.Millisecond)), nil, nil)
		name, g, done := holdGate(t, srv.URL+"/gate", "held", `{"ref":"g"}`)
		busy := post(t, nil, srv.URL+"/gate", "held", `{"ref":"g"}`, "X-Gate", name)
		wantProblem(t, busy, 409, ProblemInProgress)
		if busy.header.Get("Retry-After") != "1" {
			t.Errorf("Retry-After %q, want 1", busy.header.Get("Retry-After"))
		}
		close(g.open)
		if r := <-done; r.status != http.StatusCreated {
			t.Errorf("the held request: %d %s", r.status, r.body)
		}
		if n := e.charges(t, "g"); n != 1 {
			t.Errorf("%d charges, want 1", n)
		}
	})
}

// TestFingerprintSeesAParsedForm: after an outer middleware parsed the
// form, the body reads empty; the fingerprint must still tell two forms
// apart, and the handler must still see the form.
func TestFingerprintSeesAParsedForm(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		parse := func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if err := r.ParseMultipartForm(1 << 20); err != nil && !errors.Is(err, http.ErrNotMultipart) {
					t.Errorf("outer parse: %v", err)
				}
				next.ServeHTTP(w, r)
			})
		}
		srv := e.server(t, e.store(t), nil, parse)
		form := func(key, body string) response {
			return post(t, nil, srv.URL+"/form", key, body, "Content-Type", "application/x-www-form-urlencoded")
		}
		first := form("k", "amount=1&to=alice")
		if first.status != http.StatusCreated || !strings.Contains(string(first.body), `"amount":1,`) || !strings.Contains(string(first.body), `"to":"alice"`) {
			t.Fatalf("first: %d %s", first.status, first.body)
		}
		wantProblem(t, form("k", "amount=1000&to=mallory"), 422, ProblemKeyReused)
		if again := form("k", "to=alice&amount=1"); !again.replayed() || !bytes.Equal(again.body, first.body) {
			t.Errorf("the same form, fields in another order: %d replayed=%v %s", again.status, again.replayed(), again.body)
		}
		if a, m := e.charges(t, "alice"), e.charges(t, "mallory"); a != 1 || m != 0 {
			t.Errorf("%d charges to alice, %d to mallory; want 1 and 0", a, m)
		}

		// A multipart form with a file: the file is part of the request.
		upload := func(key, content string) response {
			var b bytes.Buffer
			mw := multipart.NewWriter(&b)
			_ = mw.WriteField("to", "bob")
			fw, _ := mw.CreateFormFile("receipt", "r.txt")
			_, _ = io.WriteString(fw, content)
			_ = mw.Close()
			return post(t, nil, srv.URL+"/form", key, b.String(), "Content-Type", mw.FormDataContentType())
		}
		if r := upload("m", "12345"); r.status != http.StatusCreated || !strings.Contains(string(r.body), `"amount":5,`) {
			t.Fatalf("upload: %d %s", r.status, r.body)
		}
		wantProblem(t, upload("m", "1234567890"), 422, ProblemKeyReused)
		if r := upload("m", "12345"); !r.replayed() {
			t.Errorf("the same upload: %d replayed=%v", r.status, r.replayed())
		}
	})
}

// TestFingerprintHeaders: the default fingerprint has the headers that say
// how to read the body; WithFingerprint adds others, an API-version header
// say.
func TestFingerprintHeaders(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), nil, nil)
		url := srv.URL + "/accounts/a1/charges"
		post(t, nil, url, "k", chargeBody, "Content-Type", "application/json")
		wantProblem(t, post(t, nil, url, "k", chargeBody, "Content-Type", "text/plain"), 422, ProblemKeyReused)
		wantProblem(t, post(t, nil, url, "k", chargeBody, "Content-Type", "application/json", "Content-Encoding", "identity"), 422, ProblemKeyReused)
		if r := post(t, nil, url, "k", chargeBody, "Content-Type", "application/json", "Api-Version", "2"); !r.replayed() {
			t.Errorf("a header outside the default fingerprint: %d replayed=%v, want a replay", r.status, r.replayed())
		}

		versioned := e.server(t, e.store(t), []Option{WithFingerprint(func(r *http.Request, body []byte) any {
			return []any{DefaultFingerprint(r, body), r.Header.Get("Api-Version")}
		})}, nil)
		url = versioned.URL + "/accounts/a1/charges"
		post(t, nil, url, "v", chargeBody, "Api-Version", "1")
		wantProblem(t, post(t, nil, url, "v", chargeBody, "Api-Version", "2"), 422, ProblemKeyReused)
		if r := post(t, nil, url, "v", chargeBody, "Api-Version", "1"); !r.replayed() {
			t.Errorf("same version: %d replayed=%v", r.status, r.replayed())
		}
	})
}

// TestJSONFingerprint: with JSONFingerprint, a JSON body is compared by
// its meaning: spacing, key order and escapes do not count, values do.
func TestJSONFingerprint(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), []Option{WithFingerprint(JSONFingerprint)}, nil)
		url := srv.URL + "/accounts/a1/charges"
		first := post(t, nil, url, "k", `{"ref":"j","amount":100}`)
		if first.status != http.StatusCreated {
			t.Fatalf("first: %d %s", first.status, first.body)
		}
		for _, same := range []string{
			"{\n  \"amount\": 100,\n  \"ref\": \"j\"\n}\n",
			`{"ref":"\u006a","amount":100}`,
		} {
			if r := post(t, nil, url, "k", same); !r.replayed() || !bytes.Equal(r.body, first.body) {
				t.Errorf("%q: %d replayed=%v, want the first answer", same, r.status, r.replayed())
			}
		}
		for _, other := range []string{
			`{"ref":"j","amount":101}`,
			`{"ref":"j","amount":100.0}`, // numbers are compared as written
			`{"ref":"j","amount":100,"note":null}`,
			`[{"ref":"j","amount":100}]`,
			`{"ref":"j","amount":100} {}`,
		} {
			wantProblem(t, post(t, nil, url, "k", other), 422, ProblemKeyReused)
		}
		if n := e.charges(t, "j"); n != 1 {
			t.Errorf("%d charges, want 1", n)
		}

		// A body that is not JSON is compared byte-for-byte.
		form := func(body string) response {
			return post(t, nil, srv.URL+"/form", "f", body, "Content-Type", "application/x-www-form-urlencoded")
		}
		form("amount=1&to=carol")
		if r := form("amount=1&to=carol"); !r.replayed() {
			t.Errorf("the same form: %d replayed=%v", r.status, r.replayed())
		}
		wantProblem(t, form("amount=1&to=carol+"), 422, ProblemKeyReused)
	})
}

func TestScopes(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		scope := WithScope(func(r *http.Request) string { return r.Header.Get("X-Account") })
		srv := e.server(t, e.store(t), []Option{scope}, nil)
		url := srv.URL + "/accounts/shared/charges"
		a := post(t, nil, url, "k", chargeBody, "X-Account", "alice")
		b := post(t, nil, url, "k", chargeBody, "X-Account", "bob")
		if b.replayed() || bytes.Equal(a.body, b.body) || b.status != http.StatusCreated {
			t.Fatalf("bob got alice's answer: %d replayed=%v %s", b.status, b.replayed(), b.body)
		}
		again := post(t, nil, url, "k", chargeBody, "X-Account", "alice")
		if !again.replayed() || !bytes.Equal(a.body, again.body) {
			t.Errorf("alice's retry: replayed=%v %s", again.replayed(), again.body)
		}
		if n := e.charges(t, "r1"); n != 2 {
			t.Errorf("%d charges, want one per account", n)
		}
	})
}

// TestScopeRefused: a scope the service cannot name (empty: the account is
// unknown) or cannot store (over 255 bytes) is the service's fault: a 500
// and an error in the log, never the shared scope, never a 400 that blames
// the client's key.
func TestScopeRefused(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		var logs logBuffer
		scope := WithScope(func(r *http.Request) string { return r.Header.Get("X-Account") })
		srv := e.server(t, e.store(t), []Option{scope, WithLogger(logs.logger())}, nil)
		url := srv.URL + "/accounts/a1/charges"
		wantProblem(t, post(t, nil, url, "k", chargeBody), 500, ProblemScopeInvalid)
		wantProblem(t, post(t, nil, url, "k", chargeBody, "X-Account", strings.Repeat("a", 256)), 500, ProblemScopeInvalid)
		if n, k := e.charges(t, "r1"), e.keys(t); n != 0 || k != 0 {
			t.Errorf("refused requests left %d charges and %d keys", n, k)
		}
		if got := strings.Count(logs.String(), "level=ERROR"); got != 2 || !strings.Contains(logs.String(), "scope") {
			t.Errorf("%d error lines, want 2 about the scope:\n%s", got, logs.String())
		}
		// A request without a key needs no scope.
		if r := post(t, nil, url, "", chargeBody); r.status != http.StatusCreated {
			t.Errorf("without a key: %d %s", r.status, r.body)
		}
	})
}

func TestResponseLimitAndStreaming(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), []Option{WithMaxResponseBytes(10 << 10)}, nil)
		for _, key := range []string{"k", ""} {
			wantProblem(t, post(t, nil, srv.URL+"/big", key, `{"ref":"big"}`), 500, ProblemResponseTooLarge)
			wantProblem(t, post(t, nil, srv.URL+"/stream", key, `{"ref":"stream"}`), 500, ProblemStreaming)
		}
		if n, m, k := e.charges(t, "big"), e.charges(t, "stream"), e.keys(t); n+m+k != 0 {
			t.Errorf("rolled-back requests left %d, %d charges and %d keys", n, m, k)
		}
		// Under the limit the same route is stored.
		roomy := e.server(t, e.store(t), []Option{WithMaxResponseBytes(64 << 10)}, nil)
		if r := post(t, nil, roomy.URL+"/big", "k2", `{"ref":"big"}`); r.status != 200 || len(r.body) != 64<<10 {
			t.Errorf("%d, %d bytes", r.status, len(r.body))
		}
	})
}

func TestServerErrors(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), nil, nil)
		first := post(t, nil, srv.URL+"/fail", "k", `{"ref":"f"}`)
		again := post(t, nil, srv.URL+"/fail", "k", `{"ref":"f"}`)
		if first.status != 503 || !strings.HasPrefix(string(first.body), "upstream down") || again.replayed() || bytes.Equal(first.body, again.body) {
			t.Fatalf("first %d %s; again %d replayed=%v %s", first.status, first.body, again.status, again.replayed(), again.body)
		}
		if n, k := e.charges(t, "f"), e.keys(t); n != 0 || k != 0 {
			t.Errorf("a 5xx left %d charges and %d keys", n, k)
		}

		stripe := e.server(t, e.store(t), []Option{WithStoreServerErrors()}, nil)
		first = post(t, nil, stripe.URL+"/fail", "s", `{"ref":"s"}`)
		again = post(t, nil, stripe.URL+"/fail", "s", `{"ref":"s"}`)
		if first.status != 503 || !again.replayed() || !bytes.Equal(first.body, again.body) || again.status != 503 {
			t.Fatalf("stored 5xx: first %d %s; again %d replayed=%v %s", first.status, first.body, again.status, again.replayed(), again.body)
		}
		if n := e.charges(t, "s"); n != 1 {
			t.Errorf("%d charges, want the stored attempt's 1", n)
		}
	})
}

func TestPanic(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), nil, nil)
		for range 2 {
			wantProblem(t, post(t, nil, srv.URL+"/panic", "k", `{"ref":"p"}`), 500, ProblemHandlerPanic)
		}
		wantProblem(t, post(t, nil, srv.URL+"/panic", "", `{"ref":"p"}`), 500, ProblemHandlerPanic)
		if n, k := e.charges(t, "p"), e.keys(t); n != 0 || k != 0 {
			t.Errorf("a panic left %d charges and %d keys", n, k)
		}
	})
}

// TestTransactionEnded: a handler whose transaction the database ended
// (and that went on writing) gets a 500 that says retrying is not safe, and
// an error in the log; never the 503 that says it is.
func TestTransactionEnded(t *testing.T) {
	t.Run("fail", func(t *testing.T) {
		var logs logBuffer
		m := Middleware(sqliteEnv(t).store(t), WithLogger(logs.logger()))(api()).(*middleware[*sqlx.Tx])
		w := httptest.NewRecorder()
		m.fail(w, httptest.NewRequest(http.MethodPost, "/x", nil), fmt.Errorf("save: %w", idempotency.ErrTransactionEnded))
		wantProblem(t, response{status: w.Code, header: w.Header(), body: w.Body.Bytes()}, 500, ProblemTransactionEnded)
		if !strings.Contains(logs.String(), "level=ERROR") {
			t.Errorf("no error logged: %s", logs.String())
		}
	})
	// Not on Postgres, which aborts a transaction on an error rather than
	// end it; the mapping is tested above.
	eachOn(t, []string{"mysql", "sqlite"}, func(t *testing.T, e env) {
		var logs logBuffer
		srv := e.server(t, e.store(t), []Option{WithLogger(logs.logger())}, nil)
		wantProblem(t, post(t, nil, srv.URL+"/rollback", "k", `{}`), 500, ProblemTransactionEnded)
		if e.keys(t) != 0 {
			t.Error("a key was stored for a request whose transaction had ended")
		}
		if !strings.Contains(logs.String(), "level=ERROR") {
			t.Errorf("no error logged: %s", logs.String())
		}
	})
}

// dropFirst lets the server handle a request and commit, then drops the
// connection instead of answering: the response is lost in transit.
func dropFirst(n int) func(http.Handler) http.Handler {
	var seen atomic.Int64
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if seen.Add(1) > int64(n) {
				next.ServeHTTP(w, r)
				return
			}
			next.ServeHTTP(httptest.NewRecorder(), r)
			panic(http.ErrAbortHandler)
		})
	}
}

func TestLostResponse(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), nil, dropFirst(1))
		srv.Config.ErrorLog = quietLog()
		url := srv.URL + "/accounts/a1/charges"
		if _, err := send(context.Background(), nil, url, "k", chargeBody); err == nil {
			t.Fatal("the first response was not lost")
		}
		r := post(t, nil, url, "k", chargeBody)
		if r.status != http.StatusCreated || !r.replayed() {
			t.Fatalf("retry: %d replayed=%v %s", r.status, r.replayed(), r.body)
		}
		if n := e.charges(t, "r1"); n != 1 {
			t.Errorf("%d charges, want 1", n)
		}
	})
}

// signalDone reports when the middleware has finished a request.
func signalDone(done chan<- struct{}) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() { done <- struct{}{} }()
			next.ServeHTTP(w, r)
		})
	}
}

func TestHangUpWhileHandling(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		done := make(chan struct{}, 1)
		srv := e.server(t, e.store(t), nil, signalDone(done))
		name, g := newGate(t, true) // the handler finishes once the client is gone
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-g.entered; cancel() }()
		if _, err := send(ctx, nil, srv.URL+"/gate", "k", `{"ref":"h"}`, "X-Gate", name); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want the client's cancellation", err)
		}
		<-done
		if n, k := e.charges(t, "h"), e.keys(t); n != 0 || k != 0 {
			t.Fatalf("a request abandoned before its handler finished left %d charges and %d keys", n, k)
		}
		// The retry runs it.
		_, g2 := newGate(t, false)
		close(g2.open)
		gates.Store(name, g2)
		if r := post(t, nil, srv.URL+"/gate", "k", `{"ref":"h"}`, "X-Gate", name); r.status != 201 || r.replayed() {
			t.Fatalf("retry: %d replayed=%v", r.status, r.replayed())
		}
		<-done
		if n := e.charges(t, "h"); n != 1 {
			t.Errorf("%d charges, want 1", n)
		}
	})
}

func TestHangUpBeforeCommit(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		done := make(chan struct{}, 1)
		srv := e.server(t, e.store(t), nil, signalDone(done))
		url := srv.URL + "/accounts/a1/charges"
		ctx, cancel := context.WithCancel(context.Background())
		hook := randomID()
		hooks.Store(hook, func(r *http.Request) {
			// The handler has finished; now the client hangs up, and the
			// server notices, before the commit.
			cancel()
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
				t.Error("the server did not notice the client hang up")
			}
		})
		defer hooks.Delete(hook)
		if _, err := send(ctx, nil, url, "k", chargeBody, "X-Hook", hook); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want the client's cancellation", err)
		}
		<-done
		if n, k := e.charges(t, "r1"), e.keys(t); n != 1 || k != 1 {
			t.Fatalf("%d charges and %d keys: the hang-up decided the commit", n, k)
		}
		r := post(t, nil, url, "k", chargeBody)
		<-done
		if r.status != http.StatusCreated || !r.replayed() {
			t.Fatalf("retry: %d replayed=%v %s", r.status, r.replayed(), r.body)
		}
	})
}

func TestConcurrentTwins(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t, idempotency.WithWait(30*time.Second)), nil, nil)
		const n = 8
		var (
			wg      sync.WaitGroup
			answers [n]response
		)
		for i := range n {
			wg.Go(func() { answers[i] = post(t, nil, srv.URL+"/accounts/a1/charges", "twin", chargeBody) })
		}
		wg.Wait()
		fresh := 0
		for _, a := range answers {
			if a.status != http.StatusCreated || !bytes.Equal(a.body, answers[0].body) {
				t.Fatalf("twins disagree: %d %s vs %s", a.status, a.body, answers[0].body)
			}
			if !a.replayed() {
				fresh++
			}
		}
		if fresh != 1 || e.charges(t, "r1") != 1 {
			t.Errorf("%d fresh answers, %d charges; want 1 and 1", fresh, e.charges(t, "r1"))
		}
	})
}

// TestUnlimitedRequestBody: WithMaxRequestBytes(math.MaxInt64) must read the
// whole body, not overflow its limit into reading none of it.
func TestUnlimitedRequestBody(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		srv := e.server(t, e.store(t), []Option{WithMaxRequestBytes(math.MaxInt64)}, nil)
		url := srv.URL + "/accounts/a1/charges"
		if r := post(t, nil, url, "k", chargeBody); r.status != http.StatusCreated {
			t.Fatalf("first: %d %s", r.status, r.body)
		}
		wantProblem(t, post(t, nil, url, "k", `{"ref":"r1","amount":200}`), 422, ProblemKeyReused)
		if n := e.charges(t, "r1"); n != 1 {
			t.Errorf("%d charges, want 1", n)
		}
	})
}

// TestBodyReadErrors: a body that fails to read for another reason than
// the middleware's own limit gets an answer, never net/http's empty 200.
func TestBodyReadErrors(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		// An outer http.MaxBytesHandler: 413, as for the middleware's limit.
		limited := e.server(t, e.store(t), nil, func(h http.Handler) http.Handler { return http.MaxBytesHandler(h, 10) })
		wantProblem(t, post(t, nil, limited.URL+"/accounts/a1/charges", "k1", chargeBody), 413, ProblemRequestTooLarge)

		// A body that breaks half-way (a faulty decompressing middleware,
		// say) while the client is still there: 400.
		broken := e.server(t, e.store(t), nil, func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				r.Body = io.NopCloser(io.MultiReader(strings.NewReader(`{"ref":`), iotest.ErrReader(errors.New("corrupt input"))))
				h.ServeHTTP(w, r)
			})
		})
		wantProblem(t, post(t, nil, broken.URL+"/accounts/a1/charges", "k2", chargeBody), 400, ProblemRequestUnreadable)
		if n, k := e.charges(t, "r1"), e.keys(t); n != 0 || k != 0 {
			t.Errorf("unread requests left %d charges and %d keys", n, k)
		}
	})
}

// withTimeout is an outer middleware that puts a deadline on the request's
// context, as timeout middleware does.
func withTimeout(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), d)
			defer cancel()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// TestOuterDeadline: a deadline that an outer middleware put on the request
// rolls the request back, and the client, still connected, is told so with
// a 503 it may retry, never net/http's empty 200.
func TestOuterDeadline(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		// On SQLite, a twin's wait for the write lock is busy_timeout
		// after busy_timeout, with the context checked in between.
		e = e.shortBusy(t)
		s := e.store(t, idempotency.WithWait(30*time.Second))
		srv := e.server(t, s, nil, withTimeout(200*time.Millisecond))
		for _, key := range []string{"k", ""} {
			name, _ := newGate(t, true) // the handler returns once its context ends
			r := post(t, nil, srv.URL+"/gate", key, `{"ref":"d"}`, "X-Gate", name)
			wantProblem(t, r, 503, ProblemDeadlineExceeded)
			if r.header.Get("Retry-After") == "" {
				t.Errorf("key %q: no Retry-After", key)
			}
		}
		if n, k := e.charges(t, "d"), e.keys(t); n != 0 || k != 0 {
			t.Errorf("requests past their deadline left %d charges and %d keys", n, k)
		}

		// A twin that waits for a held key runs into its deadline (with
		// optimistic transactions no twin waits).
		if e.Optimistic() {
			return
		}
		plain := e.server(t, s, nil, nil)
		name, g, done := holdGate(t, plain.URL+"/gate", "held", `{"ref":"t"}`)
		twin := post(t, nil, srv.URL+"/gate", "held", `{"ref":"t"}`, "X-Gate", name)
		close(g.open)
		wantProblem(t, twin, 503, ProblemDeadlineExceeded)
		if r := <-done; r.status != http.StatusCreated {
			t.Errorf("the held request: %d %s", r.status, r.body)
		}
		if n := e.charges(t, "t"); n != 1 {
			t.Errorf("%d charges, want the holder's 1", n)
		}
	})
}

// TestFailNeverSilent: fail answers however the request's context ended:
// net/http cancels it with a plain context.Canceled when the client hangs
// up, but so does a server whose BaseContext is canceled, or an outer
// middleware's cancel, while the client still waits.
func TestFailNeverSilent(t *testing.T) {
	m := Middleware(sqliteEnv(t).store(t))(api()).(*middleware[*sqlx.Tx])
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	late, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		typ  string
	}{
		{"canceled", canceled, ProblemRequestCanceled},
		{"outer deadline", late, ProblemDeadlineExceeded},
	} {
		w := httptest.NewRecorder()
		r := httptest.NewRequestWithContext(tc.ctx, http.MethodPost, "/x", nil)
		m.fail(w, r, tc.ctx.Err())
		wantProblem(t, response{status: w.Code, header: w.Header(), body: w.Body.Bytes()}, 503, tc.typ)
		// A driver's error that the context's end caused is answered the
		// same way.
		w = httptest.NewRecorder()
		m.fail(w, r, errors.New("pq: canceling statement due to user request"))
		wantProblem(t, response{status: w.Code, header: w.Header(), body: w.Body.Bytes()}, 503, tc.typ)
	}
}

// TestCanceledBaseContext: a server that cancels its BaseContext (as one
// does on shutdown) ends the request's context with a plain
// context.Canceled while the client still waits. The client must get an
// answer that says the request rolled back, never net/http's empty 200,
// with or without a key; and Transport must retry it, not take it for a
// success.
func TestCanceledBaseContext(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		for _, key := range []string{"k", ""} {
			base, cancel := context.WithCancel(context.Background())
			srv := httptest.NewUnstartedServer(Middleware(s)(api()))
			srv.Config.BaseContext = func(net.Listener) context.Context { return base }
			srv.Start()
			name, g := newGate(t, true) // the handler returns once its context ends
			go func() { <-g.entered; cancel() }()
			r := post(t, nil, srv.URL+"/gate", key, `{"ref":"c"}`, "X-Gate", name)
			wantProblem(t, r, http.StatusServiceUnavailable, ProblemRequestCanceled)
			if r.header.Get("Retry-After") != "1" {
				t.Errorf("key %q: Retry-After %q, want 1", key, r.header.Get("Retry-After"))
			}

			// Every request is canceled now: Transport retries each answer,
			// and what it returns in the end is the problem, not a 200.
			var retries atomic.Int64
			c := &http.Client{Transport: &Transport{MaxAttempts: 3, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Second,
				OnRetry: func(*http.Request, int, *http.Response, error, time.Duration) { retries.Add(1) }}}
			wantProblem(t, post(t, c, srv.URL+"/accounts/a1/charges", key, `{"ref":"c","amount":1}`), http.StatusServiceUnavailable, ProblemRequestCanceled)
			if n := retries.Load(); n != 2 {
				t.Errorf("key %q: Transport retried %d times, want 2", key, n)
			}
			srv.Close()
		}
		if n, k := e.charges(t, "c"), e.keys(t); n != 0 || k != 0 {
			t.Errorf("canceled requests left %d charges and %d keys", n, k)
		}
	})
}

type cancelKey struct{}

// TestOuterCancel: an outer middleware that cancels the request's context
// while the handler runs (here: when the handler calls the cancel it was
// given) rolls the request back; the client, still there, gets the problem
// with or without a key, and Transport's retry runs the handler again.
func TestOuterCancel(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		var runs atomic.Int64
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			runs.Add(1)
			if err := insert(r, chargeIn{Ref: r.URL.Path, Amount: 1}); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			if cancel, ok := r.Context().Value(cancelKey{}).(context.CancelFunc); ok {
				cancel()
			}
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, randomID())
		})
		// Cancels the first request it sees, while the handler runs.
		cancelFirst := func(next http.Handler) http.Handler {
			var seen atomic.Bool
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if seen.CompareAndSwap(false, true) {
					ctx, cancel := context.WithCancel(r.Context())
					defer cancel()
					r = r.WithContext(context.WithValue(ctx, cancelKey{}, context.CancelFunc(cancel)))
				}
				next.ServeHTTP(w, r)
			})
		}
		s := e.store(t)
		for _, key := range []string{"k", ""} {
			srv := httptest.NewServer(cancelFirst(Middleware(s)(h)))
			wantProblem(t, post(t, nil, srv.URL+"/direct", key, ""), http.StatusServiceUnavailable, ProblemRequestCanceled)
			srv.Close()
		}
		if n, k := e.charges(t, "/direct"), e.keys(t); n != 0 || k != 0 {
			t.Errorf("canceled requests left %d charges and %d keys", n, k)
		}

		// Through Transport (which gives the request a key).
		runs.Store(0)
		srv := httptest.NewServer(cancelFirst(Middleware(s)(h)))
		defer srv.Close()
		c := &http.Client{Transport: &Transport{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Second}}
		r := post(t, c, srv.URL+"/transport", "", "")
		if r.status != http.StatusCreated || r.replayed() {
			t.Fatalf("through Transport: %d replayed=%v %q", r.status, r.replayed(), r.body)
		}
		if n, ran := e.charges(t, "/transport"), runs.Load(); n != 1 || ran != 2 {
			t.Errorf("%d charges after the handler ran %d times; want 1 after 2", n, ran)
		}
	})
}

// TestKeylessWaitForAConnection: a request without a key that waits for a
// pooled connection gives up when its deadline passes (and is answered),
// rather than wait for as long as the pool stays full.
func TestKeylessWaitForAConnection(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		e.DB.SetMaxOpenConns(1)
		s := e.store(t)
		plain := e.server(t, s, nil, nil)
		_, g, done := holdGate(t, plain.URL+"/gate", "", `{"ref":"held"}`) // the only connection is taken
		var release sync.Once
		open := func() { release.Do(func() { close(g.open) }) }
		time.AfterFunc(5*time.Second, open) // bounds the test if the wait ignores the deadline
		srv := e.server(t, s, nil, withTimeout(200*time.Millisecond))
		start := time.Now()
		r := post(t, nil, srv.URL+"/accounts/a1/charges", "", chargeBody)
		elapsed := time.Since(start)
		open()
		wantProblem(t, r, 503, ProblemDeadlineExceeded)
		if elapsed > 2*time.Second {
			t.Errorf("answered after %v, want about the 200ms deadline", elapsed)
		}
		if r := <-done; r.status != http.StatusCreated {
			t.Errorf("the held request: %d %s", r.status, r.body)
		}
	})
}

// TestKeylessCommitRefused: a request without a key whose COMMIT the
// database refuses (a deferred foreign key, checked at COMMIT) took no
// effect, and the answer says so: store-failed, safe to retry, not
// outcome-unknown.
func TestKeylessCommitRefused(t *testing.T) {
	// Deferred constraints, which fail at COMMIT, are Postgres's.
	eachOn(t, []string{"postgres"}, func(t *testing.T, e env) {
		e.Exec(t, `CREATE TABLE parents (id int PRIMARY KEY)`)
		e.Exec(t, `CREATE TABLE children (id int PRIMARY KEY,
			parent int REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)`)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := Tx(r.Context()).ExecContext(r.Context(), `INSERT INTO children VALUES (1, 42)`); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.WriteHeader(http.StatusCreated)
		})
		srv := httptest.NewServer(Middleware(e.store(t))(h))
		t.Cleanup(srv.Close)
		wantProblem(t, post(t, nil, srv.URL, "", `{}`), http.StatusServiceUnavailable, ProblemStoreFailed)
		if n := e.Count(t, `SELECT count(*) FROM children`); n != 0 {
			t.Fatalf("%d children committed", n)
		}
	})
}
