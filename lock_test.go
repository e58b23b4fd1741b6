package idempotency

import (
	"hash/fnv"
	"testing"
)

// TestLockIDIsFNV1a: the lock number of a key is FNV-1a of scope, a zero
// byte and key, as every instance (and every earlier version) computes it.
func TestLockIDIsFNV1a(t *testing.T) {
	for _, c := range [][2]string{{"", ""}, {"", "k"}, {"acct_1", "order-42"}, {"a", "b\x00"}, {"ünï", "~ ~"}} {
		h := fnv.New64a()
		h.Write([]byte(c[0]))
		h.Write([]byte{0})
		h.Write([]byte(c[1]))
		if got, want := lockID(c[0], c[1]), int64(h.Sum64()); got != want {
			t.Errorf("lockID(%q, %q) = %d, want %d", c[0], c[1], got, want)
		}
	}
	if lockID("a", "bc") == lockID("ab", "c") {
		t.Error("scope and key run together")
	}
	if n := testing.AllocsPerRun(100, func() { _ = lockID("acct_1", "order-42") }); n != 0 {
		t.Errorf("lockID allocates %v times", n)
	}
}
