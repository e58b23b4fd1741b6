package httpadapter

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/exactlyonce/idempotency"
)

// quote writes key as an RFC 8941 sf-string.
func quote(key string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(key) + `"`
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"abc", `"abc"`, `"a\"b"`, `"a\\b"`, ` k `, `"`, `""`, `"a\b"`, "\x7f", "ключ"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		key, err := ParseKey(v)
		if err != nil {
			if !errors.Is(err, idempotency.ErrInvalidKey) {
				t.Fatalf("ParseKey(%q): %v does not wrap ErrInvalidKey", v, err)
			}
			return
		}
		if err := idempotency.ValidateKey(key); err != nil {
			t.Fatalf("ParseKey(%q) = %q, an invalid key: %v", v, key, err)
		}
		// The quoted form names the same key.
		if got, err := ParseKey(quote(key)); err != nil || got != key {
			t.Fatalf("ParseKey(quote(%q)) = %q, %v", key, got, err)
		}
		// So does the bare form, when the key can be written bare.
		if key[0] != '"' && strings.Trim(key, " \t") == key {
			if got, err := ParseKey(key); err != nil || got != key {
				t.Fatalf("ParseKey(%q) = %q, %v; want the key back", key, got, err)
			}
		}
	})
}

// FuzzCanonicalJSON: a canonical text is valid JSON and its own canonical
// form, so JSONFingerprint can never confuse a JSON body with another body
// compared byte-for-byte; and equal meaning gives equal text.
func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{`{"b":1,"a":[true,null,"x"]}`, ` { "a" : 1.50e3 } `, `"\u00e9<&>"`, `12345678901234567890123`, `{"a":1,"a":2}`, `[] []`, "\xff", ``, `{"a":"\ud800"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := canonicalJSON([]byte(s))
		if !ok {
			return
		}
		if !json.Valid(c) {
			t.Fatalf("canonicalJSON(%q) = %q, not JSON", s, c)
		}
		again, ok := canonicalJSON(c)
		if !ok || !bytes.Equal(again, c) {
			t.Fatalf("canonicalJSON(%q) = %q, whose canonical form is %q, %v", s, c, again, ok)
		}
		// The same value indented reads the same.
		var b bytes.Buffer
		if err := json.Indent(&b, []byte(s), " ", "\t"); err == nil {
			if ind, ok := canonicalJSON(b.Bytes()); !ok || !bytes.Equal(ind, c) {
				t.Fatalf("indented %q: %q, %v; want %q", s, ind, ok, c)
			}
		}
	})
}

func FuzzBackoff(f *testing.F) {
	f.Add(int64(time.Millisecond), int64(20*time.Millisecond), 3)
	f.Add(int64(time.Hour), int64(0), 40)
	f.Add(int64(math.MaxInt64), int64(math.MaxInt64), math.MaxInt)
	f.Fuzz(func(t *testing.T, minB, maxB int64, attempt int) {
		if attempt < 1 {
			attempt = 1 // the transport counts from 1
		}
		checkBackoff(t, time.Duration(minB), time.Duration(maxB), attempt)
	})
}

// FuzzBytesText: a part of the request encodes as the JSON string it
// always did when it is valid UTF-8 (stored fingerprints stay valid), two
// different parts never encode alike, and idempotency.Fingerprint takes
// every one.
func FuzzBytesText(f *testing.F) {
	for _, s := range []string{"", "a", "é", "\xff", "\xfe", "<&>\u2028", `{"bytes":"/w=="}`, "a\xffb", "\ufffd"} {
		f.Add(s, "\xff")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ea, err := json.Marshal(bytesText(a))
		if err != nil {
			t.Fatalf("%q: %v", a, err)
		}
		if utf8.ValidString(a) {
			if want, _ := json.Marshal(a); !bytes.Equal(ea, want) {
				t.Fatalf("%q encodes as %s, want %s as before", a, ea, want)
			}
		}
		eb, err := json.Marshal(bytesText(b))
		if err != nil {
			t.Fatalf("%q: %v", b, err)
		}
		if (a == b) != bytes.Equal(ea, eb) {
			t.Fatalf("%q and %q encode as %s and %s", a, b, ea, eb)
		}
		if _, err := idempotency.Fingerprint(fingerprint{Method: "POST", Path: bytesText(a), ContentType: bytesText(b)}); err != nil {
			t.Fatalf("Fingerprint refused %q, %q: %v", a, b, err)
		}
	})
}
