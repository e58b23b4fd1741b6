package idempotency_test

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jmoiron/sqlx"
	_ "modernc.org/sqlite"

	"github.com/exactlyonce/idempotency"
)

// closedStore is a store on a closed database: a call that gets past the
// key check fails on the database, so an invalid key that reached it would
// show up as the wrong error.
func closedStore(t testing.TB) *idempotency.Store {
	db, err := sqlx.Open("sqlite", "file::memory:")
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	s, err := idempotency.New(db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// FuzzValidateKey checks the key rule (1 to 255 bytes of printable ASCII)
// against an independent statement of it, and that Do refuses an invalid
// key before it touches the database or calls fn.
func FuzzValidateKey(f *testing.F) {
	for _, seed := range []string{"", "a", "order-42", " ", "~", "\x7f", "\x1f", "k\x00", "é", strings.Repeat("x", 255), strings.Repeat("x", 256)} {
		f.Add(seed)
	}
	s := closedStore(f)
	f.Fuzz(func(t *testing.T, key string) {
		valid := len(key) >= 1 && len(key) <= idempotency.MaxKeyLen
		for i := 0; i < len(key); i++ {
			if key[i] < 0x20 || key[i] > 0x7e {
				valid = false
			}
		}
		err := idempotency.ValidateKey(key)
		if valid != (err == nil) {
			t.Fatalf("ValidateKey(%q) = %v, want valid=%v", key, err, valid)
		}
		if err != nil && (!errors.Is(err, idempotency.ErrInvalidKey) || !strings.HasPrefix(err.Error(), "idempotency: invalid key: ")) {
			t.Fatalf("ValidateKey(%q) = %v, want ErrInvalidKey with a detail", key, err)
		}
		called := false
		_, derr := idempotency.Do(context.Background(), s, key, nil, func(context.Context, *sqlx.Tx) (int, error) {
			called = true
			return 0, nil
		})
		if called {
			t.Fatalf("Do(%q) called fn on a closed database", key)
		}
		if valid == errors.Is(derr, idempotency.ErrInvalidKey) {
			t.Fatalf("Do(%q) = %v, want ErrInvalidKey exactly when the key is invalid (valid=%v)", key, derr, valid)
		}
		if !valid && derr.Error() != err.Error() {
			t.Fatalf("Do(%q) = %q, ValidateKey says %q", key, derr, err)
		}
	})
}

// FuzzFingerprint checks that fingerprints are canonical: the same value
// always gives the same fingerprint, whatever the order maps are built in
// or whether it is a struct or the equivalent map; and different values
// give different fingerprints.
func FuzzFingerprint(f *testing.F) {
	f.Add("a", "b", int64(1), int64(2), 1.5, []byte("x"))
	f.Add("", "", int64(0), int64(0), 0.0, []byte(nil))
	f.Add("<&>", "\u2028", int64(-1), int64(math.MaxInt64), math.Copysign(0, -1), []byte{0, 255})
	f.Add("key", "key ", int64(1<<53), int64(1<<53+1), 1e21, []byte("{}"))
	f.Fuzz(func(t *testing.T, a, b string, x, y int64, fl float64, raw []byte) {
		// Fields in name order: Fingerprint sorts map keys but keeps a
		// struct's field order, so only then is the struct's JSON the map's.
		type params struct {
			A string  `json:"a"`
			B string  `json:"b"`
			F float64 `json:"f"`
			R []byte  `json:"r"`
			X int64   `json:"x"`
			Y int64   `json:"y"`
		}
		p := params{a, b, fl, raw, x, y}
		// Invalid UTF-8 would collide (JSON writes U+FFFD for every bad
		// byte), so Fingerprint refuses it.
		if !utf8.ValidString(a) || !utf8.ValidString(b) {
			_, err := idempotency.Fingerprint(p)
			finite := !math.IsNaN(fl) && !math.IsInf(fl, 0) // else JSON fails first, on the float
			if err == nil || finite && !strings.Contains(err.Error(), "not valid UTF-8") {
				t.Fatalf("Fingerprint(%q / %q / %v) = %v, want it refused", a, b, fl, err)
			}
			return
		}
		fp := func(v any) []byte {
			t.Helper()
			sum, err := idempotency.Fingerprint(v)
			if math.IsNaN(fl) || math.IsInf(fl, 0) {
				if err == nil {
					t.Fatalf("Fingerprint accepted %v, which JSON cannot encode", fl)
				}
				t.Skip()
			}
			if err != nil {
				t.Fatalf("Fingerprint(%#v): %v", v, err)
			}
			if len(sum) != 32 {
				t.Fatalf("fingerprint of %d bytes, want 32", len(sum))
			}
			return sum
		}
		base := fp(p)
		if !bytes.Equal(base, fp(p)) {
			t.Fatal("the same value gave two fingerprints")
		}
		// The same value as maps built in two orders.
		m1 := map[string]any{}
		m2 := map[string]any{}
		kv := []struct {
			k string
			v any
		}{{"a", a}, {"b", b}, {"x", x}, {"y", y}, {"f", fl}, {"r", raw}}
		for i := range kv {
			m1[kv[i].k] = kv[i].v
			m2[kv[len(kv)-1-i].k] = kv[len(kv)-1-i].v
		}
		if !bytes.Equal(base, fp(m1)) || !bytes.Equal(base, fp(m2)) {
			t.Fatal("a struct and the equal maps gave different fingerprints")
		}
		// Different values differ.
		if a != b {
			if bytes.Equal(fp(params{A: a}), fp(params{A: b})) {
				t.Fatalf("strings %q and %q gave one fingerprint", a, b)
			}
			if bytes.Equal(fp(map[string]string{a: "v"}), fp(map[string]string{b: "v"})) {
				t.Fatalf("map keys %q and %q gave one fingerprint", a, b)
			}
		}
		if x != y && bytes.Equal(fp(params{X: x}), fp(params{X: y})) {
			t.Fatalf("%d and %d gave one fingerprint", x, y)
		}
		if !bytes.Equal(raw, []byte(b)) && bytes.Equal(fp(params{R: raw}), fp(params{R: []byte(b)})) {
			t.Fatalf("bytes %q and %q gave one fingerprint", raw, b)
		}
		if fl != float64(x) && bytes.Equal(fp(params{F: fl}), fp(params{F: float64(x)})) && !(fl == 0 && x == 0) {
			t.Fatalf("floats %v and %v gave one fingerprint", fl, float64(x))
		}
	})
}

// TestFingerprintUTF8: invalid UTF-8 is refused rather than collapsed into
// U+FFFD, while text that merely spells the escape, or holds U+FFFD itself,
// is fine and distinct.
func TestFingerprintUTF8(t *testing.T) {
	for _, bad := range []any{"\xff", map[string]string{"card": "\xfe"}, []string{"ok", "a\xc3"}, map[string]int{"\xff": 1}} {
		if _, err := idempotency.Fingerprint(bad); err == nil || !strings.Contains(err.Error(), "not valid UTF-8") {
			t.Errorf("Fingerprint(%q) = %v, want a UTF-8 error", bad, err)
		}
	}
	seen := map[string]string{}
	for _, good := range []string{`\ufffd`, `\\ufffd`, "\ufffd", `a\\\ufffd`, "plain"} {
		fp, err := idempotency.Fingerprint(good)
		if err != nil {
			t.Fatalf("Fingerprint(%q): %v", good, err)
		}
		if prev, ok := seen[string(fp)]; ok {
			t.Errorf("%q and %q share a fingerprint", prev, good)
		}
		seen[string(fp)] = good
	}
}
