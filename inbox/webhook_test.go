package inbox_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/inbox"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// hmacVerifier is a minimal scheme for the tests: X-Sig is
// "<unix time>.<hex HMAC-SHA256 of time.body>", and the body is {"id": ...}.
func hmacVerifier(secret []byte) inbox.Verifier {
	return inbox.VerifierFunc(func(body []byte, h http.Header) (inbox.Event, error) {
		ts, sig, ok := bytes.Cut([]byte(h.Get("X-Sig")), []byte("."))
		if !ok || !hmac.Equal(sig, []byte(sign(secret, string(ts), body))) {
			return inbox.Event{}, errors.New("bad signature")
		}
		sec, err := strconv.ParseInt(string(ts), 10, 64)
		if err != nil {
			return inbox.Event{}, err
		}
		var e struct{ ID string }
		if err := json.Unmarshal(body, &e); err != nil {
			return inbox.Event{}, err
		}
		return inbox.Event{ID: e.ID, SignedAt: time.Unix(sec, 0)}, nil
	})
}

func sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts + "."))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

func TestWebhook(t *testing.T) {
	t.Parallel()
	secret := []byte("whsec_test")
	db := testdb.Backends()[0].Open(t) // SQLite: the protocol is the store's, tested on every store above
	db.MustExec(testdb.Charges)
	store, err := idempotency.New(db)
	if err != nil {
		t.Fatal(err)
	}
	in, err := inbox.New(store)
	if err != nil {
		t.Fatal(err)
	}
	fail := false
	h, err := inbox.Webhook(in, "provider", hmacVerifier(secret), inbox.WebhookConfig{},
		func(ctx context.Context, tx *sqlx.Tx, e inbox.Event, body []byte) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO charges (ref, amount) VALUES (?, 1)`, e.ID); err != nil {
				return err
			}
			if fail {
				return errors.New("handler failed")
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	count := func(query string) int {
		var n int
		if err := db.Get(&n, query); err != nil {
			t.Fatal(err)
		}
		return n
	}
	post := func(body, sig string) int {
		r := httptest.NewRequest(http.MethodPost, "/hooks", bytes.NewBufferString(body))
		r.Header.Set("X-Sig", sig)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	now := strconv.FormatInt(time.Now().Unix(), 10)
	old := strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)
	future := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	body := `{"id":"evt_1"}`

	for _, c := range []struct{ name, body, sig string }{
		{"bad signature", body, now + "." + sign([]byte("other"), now, []byte(body))},
		{"no signature", body, ""},
		{"body changed after signing", `{"id":"evt_2"}`, now + "." + sign(secret, now, []byte(body))},
		{"stale timestamp", body, old + "." + sign(secret, old, []byte(body))},
		{"timestamp in the future", body, future + "." + sign(secret, future, []byte(body))},
	} {
		if code := post(c.body, c.sig); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", c.name, code)
		}
	}
	if n := count(`SELECT COUNT(*) FROM idempotency_keys`) + count(`SELECT COUNT(*) FROM charges`); n != 0 {
		t.Fatalf("refused webhooks wrote %d rows, want none", n)
	}

	fail = true
	if code := post(body, now+"."+sign(secret, now, []byte(body))); code != http.StatusInternalServerError {
		t.Fatalf("failing handler: %d, want 500", code)
	}
	fail = false
	for i := range 2 {
		if code := post(body, now+"."+sign(secret, now, []byte(body))); code != http.StatusOK {
			t.Fatalf("delivery %d: %d, want 200", i+1, code)
		}
	}
	if n := count(`SELECT COUNT(*) FROM charges`); n != 1 {
		t.Fatalf("%d charges, want 1", n)
	}

	small, err := inbox.Webhook(in, "provider", hmacVerifier(secret), inbox.WebhookConfig{MaxBody: 8},
		func(context.Context, *sqlx.Tx, inbox.Event, []byte) error { t.Error("the handler ran"); return nil })
	if err != nil {
		t.Fatal(err)
	}
	for method, want := range map[string]int{http.MethodPost: http.StatusRequestEntityTooLarge, http.MethodGet: http.StatusMethodNotAllowed} {
		w := httptest.NewRecorder()
		small.ServeHTTP(w, httptest.NewRequest(method, "/hooks", bytes.NewBufferString(`{"id":"evt_big"}`)))
		if w.Code != want {
			t.Errorf("%s of a body over MaxBody: %d, want %d", method, w.Code, want)
		}
	}
}

func TestWebhookConfig(t *testing.T) {
	t.Parallel()
	db := testdb.Backends()[0].Open(t)
	store, err := idempotency.New(db)
	if err != nil {
		t.Fatal(err)
	}
	in, err := inbox.New(store)
	if err != nil {
		t.Fatal(err)
	}
	fn := func(context.Context, *sqlx.Tx, inbox.Event, []byte) error { return nil }
	v := hmacVerifier([]byte("s"))
	for name, build := range map[string]func() (http.Handler, error){
		"nil inbox":    func() (http.Handler, error) { return inbox.Webhook[*sqlx.Tx](nil, "p", v, inbox.WebhookConfig{}, fn) },
		"nil verifier": func() (http.Handler, error) { return inbox.Webhook(in, "p", nil, inbox.WebhookConfig{}, fn) },
		"nil fn":       func() (http.Handler, error) { return inbox.Webhook(in, "p", v, inbox.WebhookConfig{}, nil) },
		"empty source": func() (http.Handler, error) { return inbox.Webhook(in, "", v, inbox.WebhookConfig{}, fn) },
		"negative max": func() (http.Handler, error) { return inbox.Webhook(in, "p", v, inbox.WebhookConfig{MaxBody: -1}, fn) },
	} {
		if _, err := build(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
