package httpadapter

import (
	"errors"
	"strings"
	"testing"

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
