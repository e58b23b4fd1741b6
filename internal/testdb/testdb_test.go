package testdb

import (
	"sync"
	"testing"
)

// TestContainersStartTogether: the Postgres and MySQL containers may start
// at the same moment (packages' tests run in parallel); under -race this
// fails if they share state.
func TestContainersStartTogether(t *testing.T) {
	t.Setenv("IDEMPOTENCY_POSTGRES_DSN", "")
	t.Setenv("IDEMPOTENCY_MYSQL_DSN", "")
	saved, savedStart := containers, start
	t.Cleanup(func() { containers, start = saved, savedStart })
	containers = map[string]*container{"postgres": {}, "mysql": {}}
	start = func(kind string) (string, error) { return kind + "://started", nil }

	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		kind := []string{"postgres", "mysql"}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = serverDSN(t, kind)
		}()
	}
	wg.Wait()
	for i, dsn := range got {
		want := []string{"postgres", "mysql"}[i%2] + "://started"
		if dsn != want {
			t.Errorf("call %d: %q, want %q", i, dsn, want)
		}
	}
}
