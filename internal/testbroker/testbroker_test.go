package testbroker

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

// recorder is a testing.TB whose Fatal and Skip are noted, and stop the
// call as the real ones do.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()           {}
func (r *recorder) Fatal(args ...any) { r.fatal = fmt.Sprint(args...); panic(r) }
func (r *recorder) Skip(args ...any)  { r.skip = fmt.Sprint(args...); panic(r) }

func call(t *testing.T, f func(testing.TB) string) (url string, r *recorder) {
	r = &recorder{TB: t}
	defer func() {
		if p := recover(); p != nil && p != r {
			panic(p)
		}
	}()
	return f(r), r
}

// TestURL: a URL from the environment is used as it is; without one, a
// broker that cannot start skips the test, or fails it under CI=true,
// with a message naming the variable to set; the start is tried once.
func TestURL(t *testing.T) {
	saved, savedStart := containers, startBroker
	t.Cleanup(func() { containers, startBroker = saved, savedStart })
	var starts atomic.Int32
	startBroker = func(string) (string, error) { starts.Add(1); return "", errors.New("no Docker here") }
	containers = map[string]*container{"nats": {}, "rabbitmq": {}}

	t.Setenv("IDEMPOTENCY_NATS_URL", "nats://example:4222")
	if url, r := call(t, NATS); url != "nats://example:4222" || r.fatal+r.skip != "" {
		t.Fatalf("with the variable set: %q, %+v", url, r)
	}

	t.Setenv("IDEMPOTENCY_RABBITMQ_URL", "")
	t.Setenv("CI", "")
	_, r := call(t, RabbitMQ)
	if r.skip == "" || !strings.Contains(r.skip, "IDEMPOTENCY_RABBITMQ_URL") || !strings.Contains(r.skip, "no Docker here") {
		t.Fatalf("outside CI: skip %q, fatal %q; want a skip naming the variable and the cause", r.skip, r.fatal)
	}
	t.Setenv("CI", "true")
	_, r = call(t, RabbitMQ)
	if r.fatal == "" || !strings.Contains(r.fatal, "IDEMPOTENCY_RABBITMQ_URL") {
		t.Fatalf("under CI=true: fatal %q, skip %q; want a failure naming the variable", r.fatal, r.skip)
	}
	if n := starts.Load(); n != 1 {
		t.Fatalf("the container was tried %d times, want once", n)
	}
}
