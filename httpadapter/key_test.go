package httpadapter

import (
	"regexp"
	"testing"
)

// TestNewKey: a key is a UUIDv7, and keys made later sort later (their
// first 48 bits are the time in milliseconds).
func TestNewKey(t *testing.T) {
	t.Parallel()
	v7 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	prev := NewKey()
	for range 100 {
		k := NewKey()
		if !v7.MatchString(k) {
			t.Fatalf("%s is not a UUIDv7", k)
		}
		if k[:13] < prev[:13] {
			t.Fatalf("%s made after %s sorts before it", k, prev)
		}
		prev = k
	}
}
