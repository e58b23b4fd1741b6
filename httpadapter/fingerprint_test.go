package httpadapter

import (
	"bytes"
	"encoding/hex"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency"
)

// goldenRequest is a request whose fingerprint is pinned: keys stored
// before a change to the fingerprint must still match their retries after
// it.
type goldenRequest struct {
	name string
	body []byte
	req  func() *http.Request
}

func goldenRequests() []goldenRequest {
	multipartBody := func() (string, []byte) {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		_ = mw.SetBoundary("golden-boundary")
		_ = mw.WriteField("to", "bob")
		_ = mw.WriteField("note", "ça <va> & co")
		fw, _ := mw.CreateFormFile("receipt", "reçu <1>.txt")
		_, _ = io.WriteString(fw, "12345")
		_ = mw.Close()
		return mw.FormDataContentType(), b.Bytes()
	}
	return []goldenRequest{
		{"json", []byte(chargeBody), func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/accounts/a1/charges?expand=x&y=%C3%A9", strings.NewReader(chargeBody))
			r.Header.Set("Content-Type", "application/json; charset=utf-8")
			return r
		}},
		{"unicode path and escapes", []byte(`{"ref":"é","amount":1}`), func() *http.Request {
			r := httptest.NewRequest(http.MethodPatch, "/accounts/%C3%A9%3C%3E&/charges", nil)
			r.Header.Set("Content-Type", `text/plain; charset="utf-8"; x="<&>"`)
			r.Header.Set("Content-Encoding", "gzip")
			return r
		}},
		{"empty", nil, func() *http.Request {
			return httptest.NewRequest(http.MethodPost, "/", nil)
		}},
		{"parsed form", nil, func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/form", strings.NewReader("amount=1&to=%C3%A9"))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if err := r.ParseForm(); err != nil {
				panic(err)
			}
			return r
		}},
		{"parsed multipart", nil, func() *http.Request {
			ct, body := multipartBody()
			r := httptest.NewRequest(http.MethodPost, "/form", bytes.NewReader(body))
			r.Header.Set("Content-Type", ct)
			if err := r.ParseMultipartForm(1 << 20); err != nil {
				panic(err)
			}
			return r
		}},
	}
}

// TestFingerprintStable: the fingerprints of ordinary requests (valid
// UTF-8 throughout) are those that earlier versions stored, so that a
// retry after a deploy still matches its key rather than answer 422.
func TestFingerprintStable(t *testing.T) {
	// DefaultFingerprint's, then JSONFingerprint's, as stored before
	// invalid UTF-8 was fingerprinted by its bytes.
	want := map[string][2]string{
		"json":                     {"f9466a2d51ed0c99de04490c87d2b6d1dabd62a1dbe404e71ba8cf52005a51d4", "56a8010508ba292c255449c630d13f5e5f011e4d455b36c380e8b0fe129b161d"},
		"unicode path and escapes": {"643f76dcd6de47aa8e9460febb4a72906657302b667a918c82785779cf03440b", "1fdeee69cba0ed74df5b8a928a0c82ae4f800187d11da5abf7bae004c63c798c"},
		"empty":                    {"bd4f9f099e40b126fb922c1bccb86b31503016ec86693db9dcc5e85dd44f190a", "bd4f9f099e40b126fb922c1bccb86b31503016ec86693db9dcc5e85dd44f190a"},
		"parsed form":              {"5cc8e7111bddb91dfd40c6932b4fed9b6e6fa4dd08cc5cfda25628c13bc09c0a", "5cc8e7111bddb91dfd40c6932b4fed9b6e6fa4dd08cc5cfda25628c13bc09c0a"},
		"parsed multipart":         {"3fbfa084069334969ca3802a3a40704ca67ce2b7c7390d8504b608dafec8bde4", "3fbfa084069334969ca3802a3a40704ca67ce2b7c7390d8504b608dafec8bde4"},
	}
	for _, c := range goldenRequests() {
		for i, fn := range []func(*http.Request, []byte) any{DefaultFingerprint, JSONFingerprint} {
			fp, err := idempotency.Fingerprint(fn(c.req(), c.body))
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if got := hex.EncodeToString(fp); got != want[c.name][i] {
				t.Errorf("%s (%d): fingerprint %s, want %s", c.name, i, got, want[c.name][i])
			}
		}
	}
}

// TestNonUTF8Request: a request whose path, Content-Type or upload's file
// name is not valid UTF-8 runs like any other: its fingerprint is made of
// its bytes, so the handler runs once (no store failure for Transport to
// retry), a retry replays, and another byte in the same place is another
// request.
func TestNonUTF8Request(t *testing.T) {
	each(t, func(t *testing.T, e env) {
		var retries atomic.Int64
		c := &http.Client{Transport: &Transport{MaxAttempts: 5, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Second,
			OnRetry: func(*http.Request, int, *http.Response, error, time.Duration) { retries.Add(1) }}}
		plain := e.server(t, e.store(t), nil, nil)
		parsed := e.server(t, e.store(t), nil, func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if err := r.ParseMultipartForm(1 << 20); err != nil {
					t.Errorf("outer parse: %v", err)
				}
				next.ServeHTTP(w, r)
			})
		})
		upload := func(url, key, name string) response {
			var b bytes.Buffer
			mw := multipart.NewWriter(&b)
			_ = mw.WriteField("to", "upload")
			h := textproto.MIMEHeader{}
			h.Set("Content-Disposition", `form-data; name="receipt"; filename*=UTF-8''`+name)
			h.Set("Content-Type", "text/plain")
			fw, _ := mw.CreatePart(h)
			_, _ = io.WriteString(fw, "12345")
			_ = mw.Close()
			return post(t, c, url, key, b.String(), "Content-Type", mw.FormDataContentType())
		}
		for _, tc := range []struct {
			name, ref string
			send      func(key string, other bool) response
		}{
			{"path", "path", func(key string, other bool) response {
				acct := "%FF"
				if other {
					acct = "%FE"
				}
				return post(t, c, plain.URL+"/accounts/"+acct+"/charges", key, `{"ref":"path","amount":1}`)
			}},
			{"Content-Type", "ct", func(key string, other bool) response {
				ct := "application/json; note=\xff"
				if other {
					ct = "application/json; note=\xfe"
				}
				return post(t, c, plain.URL+"/accounts/a1/charges", key, `{"ref":"ct","amount":1}`, "Content-Type", ct)
			}},
			{"file name", "upload", func(key string, other bool) response {
				if other {
					return upload(parsed.URL+"/form", key, "re%E8u.txt")
				}
				return upload(parsed.URL+"/form", key, "re%E7u.txt")
			}},
		} {
			retries.Store(0)
			first := tc.send(tc.name, false)
			if first.status != http.StatusCreated || first.replayed() || retries.Load() != 0 {
				t.Errorf("%s: %d replayed=%v after %d retries, %s; want 201 at once", tc.name, first.status, first.replayed(), retries.Load(), first.body)
				continue
			}
			if again := tc.send(tc.name, false); !again.replayed() || !bytes.Equal(again.body, first.body) {
				t.Errorf("%s: the same request again: %d replayed=%v %s", tc.name, again.status, again.replayed(), again.body)
			}
			wantProblem(t, tc.send(tc.name, true), http.StatusUnprocessableEntity, ProblemKeyReused)
			if n := e.charges(t, tc.ref); n != 1 {
				t.Errorf("%s: %d charges, want 1", tc.name, n)
			}
		}
	})
}

// TestFingerprintFailed: a WithFingerprint function whose value cannot be
// encoded is the service's bug, which a retry meets again: a 500 that
// Transport does not retry, not a 503 store-failed; the handler does not
// run.
func TestFingerprintFailed(t *testing.T) {
	e := sqliteEnv(t)
	var logs logBuffer
	srv := e.server(t, e.store(t), []Option{WithLogger(logs.logger()), WithFingerprint(func(*http.Request, []byte) any {
		return func() {} // not JSON
	})}, nil)
	var retries atomic.Int64
	c := &http.Client{Transport: &Transport{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Second,
		OnRetry: func(*http.Request, int, *http.Response, error, time.Duration) { retries.Add(1) }}}
	wantProblem(t, post(t, c, srv.URL+"/accounts/a1/charges", "k", chargeBody), http.StatusInternalServerError, ProblemFingerprintFailed)
	if n, k, r := e.charges(t, "r1"), e.keys(t), retries.Load(); n != 0 || k != 0 || r != 0 {
		t.Errorf("%d charges, %d keys, %d retries; want none", n, k, r)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("no error logged: %s", logs.String())
	}
}
