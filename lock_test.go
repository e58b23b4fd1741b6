package idempotency

import (
	"hash/fnv"
	"testing"

	"github.com/exactlyonce/idempotency/dialects"
)

// TestLockIDIsFNV1a: the lock number of a key in the default table is
// FNV-1a of scope, a zero byte and key, as every instance (and every
// earlier version) computes it; in another table, the table's name and a
// zero byte come first.
func TestLockIDIsFNV1a(t *testing.T) {
	const def = dialects.DefaultTable
	fnv1a := func(parts ...string) int64 {
		h := fnv.New64a()
		for i, p := range parts {
			if i > 0 {
				h.Write([]byte{0})
			}
			h.Write([]byte(p))
		}
		return int64(h.Sum64())
	}
	for _, c := range [][2]string{{"", ""}, {"", "k"}, {"acct_1", "order-42"}, {"a", "b\x00"}, {"ünï", "~ ~"}} {
		if got, want := lockID(def, c[0], c[1]), fnv1a(c[0], c[1]); got != want {
			t.Errorf("lockID(%q, %q) = %d, want %d", c[0], c[1], got, want)
		}
		if got, want := lockID("billing.keys", c[0], c[1]), fnv1a("billing.keys", c[0], c[1]); got != want {
			t.Errorf("lockID(billing.keys, %q, %q) = %d, want %d", c[0], c[1], got, want)
		}
	}
	if lockID(def, "a", "bc") == lockID(def, "ab", "c") {
		t.Error("scope and key run together")
	}
	if lockID(def, "s", "k") == lockID("other_keys", "s", "k") {
		t.Error("two key tables share a key's lock")
	}
	if n := testing.AllocsPerRun(100, func() { _ = lockID("billing.keys", "acct_1", "order-42") }); n != 0 {
		t.Errorf("lockID allocates %v times", n)
	}
}
