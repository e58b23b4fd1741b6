package idempotency_test

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/exactlyonce/idempotency"
)

// uuidV8 is a lower-case UUID of version 8 and variant 10.
var uuidV8 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestDownstreamKey(t *testing.T) {
	t.Parallel()
	// Computed apart from the code (Python's hashlib, as the doc comment
	// describes the derivation): the key must never change between
	// releases, or jobs in flight during an upgrade would call twice.
	for _, c := range []struct{ scope, key, step, want string }{
		{"cus_1", "order-1", "charge", "d9a0cebf-c2d7-8b6c-8c6d-d89da8730de8"},
		{"", "", "", "e09fa32e-11c0-8542-b5ee-bb030834707d"},
	} {
		if got := idempotency.DownstreamKey(c.scope, c.key, c.step); got != c.want {
			t.Errorf("DownstreamKey(%q, %q, %q) = %s, want %s", c.scope, c.key, c.step, got, c.want)
		}
	}

	// Any other scope, key or step is another key, also where the three
	// strings run together the same ("ab"+"c" against "a"+"bc").
	calls := [][3]string{
		{"cus_1", "order-1", "charge"},
		{"cus_2", "order-1", "charge"},
		{"cus_1", "order-2", "charge"},
		{"cus_1", "order-1", "refund"},
		{"ab", "c", "charge"},
		{"a", "bc", "charge"},
		{"a", "b", "ccharge"},
		{"a", "bcc", "harge"},
		{"", "", ""},
		{"", "", "x"},
		{"x", "", ""},
	}
	seen := map[string][3]string{}
	for _, c := range calls {
		k := idempotency.DownstreamKey(c[0], c[1], c[2])
		if again := idempotency.DownstreamKey(c[0], c[1], c[2]); again != k {
			t.Errorf("%q: %s, then %s", c, k, again)
		}
		if other, ok := seen[k]; ok {
			t.Errorf("%q and %q share the key %s", c, other, k)
		}
		seen[k] = c
		if !uuidV8.MatchString(k) {
			t.Errorf("%q: %s is not a version 8 UUID", c, k)
		}
		// It is a valid key here too, so a service can hand it on to
		// another service built on this package.
		if err := idempotency.ValidateKey(k); err != nil {
			t.Errorf("%q: %v", c, err)
		}
	}
}

// A job that calls a payment provider after the commit sends the same key on
// every run, so the provider charges once; another step of the same call,
// or the same order of another customer, gets another key.
func ExampleDownstreamKey() {
	fmt.Println(idempotency.DownstreamKey("cus_1", "order-1", "charge"))
	fmt.Println(idempotency.DownstreamKey("cus_1", "order-1", "charge"))
	fmt.Println(idempotency.DownstreamKey("cus_1", "order-1", "receipt-email"))
	fmt.Println(idempotency.DownstreamKey("cus_2", "order-1", "charge"))
	// Output:
	// d9a0cebf-c2d7-8b6c-8c6d-d89da8730de8
	// d9a0cebf-c2d7-8b6c-8c6d-d89da8730de8
	// 75d3fb9a-96e8-8806-bcdd-38a023017a14
	// ae2cdc2a-bdc0-87af-b1b5-5a05670f6d14
}
