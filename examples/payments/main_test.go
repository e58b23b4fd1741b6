package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/httpadapter"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

func TestChargesAPI(t *testing.T) {
	db, err := sqlx.Open("sqlite", testdb.SQLiteDSN(filepath.Join(t.TempDir(), "payments.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := setup(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	h, err := newServer(db)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	do := func(method, path, key, body string) (*http.Response, []byte) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}

	first, body := do("POST", "/v1/charges", "order-1", `{"amount":1000,"currency":"EUR"}`)
	if first.StatusCode != 201 {
		t.Fatalf("create: %d %s", first.StatusCode, body)
	}
	again, replayed := do("POST", "/v1/charges", "order-1", `{"amount":1000,"currency":"EUR"}`)
	if again.StatusCode != 201 || again.Header.Get("Idempotent-Replayed") != "true" || !bytes.Equal(body, replayed) ||
		again.Header.Get("Location") != first.Header.Get("Location") {
		t.Fatalf("retry: %d %v %s; want the first answer replayed", again.StatusCode, again.Header, replayed)
	}
	var n int
	if err := db.Get(&n, `SELECT COUNT(*) FROM charges`); err != nil || n != 1 {
		t.Fatalf("%d charges (%v), want 1", n, err)
	}
	if got, b := do("GET", first.Header.Get("Location"), "", ""); got.StatusCode != 200 || !bytes.Equal(b, body) {
		t.Errorf("GET: %d %s", got.StatusCode, b)
	}

	reused, b := do("POST", "/v1/charges", "order-1", `{"amount":2000,"currency":"EUR"}`)
	if reused.StatusCode != 422 || reused.Header.Get("Content-Type") != httpadapter.ProblemContentType ||
		!strings.Contains(string(b), httpadapter.ProblemKeyReused) {
		t.Errorf("reused key: %d %s", reused.StatusCode, b)
	}
}
