package main

import (
	"context"
	"errors"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestFlowStats: stats counts flows that run (a live lease) apart from
// flows that stopped and wait for a retry or a completer.
func TestFlowStats(t *testing.T) {
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dsn := b.DSN(t)
			db := b.OpenDSN(t, dsn)
			store, err := idempotency.New(db)
			if err != nil {
				t.Fatal(err)
			}
			errStop := errors.New("stop")
			release := make(chan struct{})
			running := make(chan struct{})
			f := idempotency.NewFlow("stats", func(ctx context.Context, s *idempotency.Steps[*sqlx.Tx], stop bool) (int, error) {
				if stop {
					return 0, errStop
				}
				close(running)
				<-release
				return 1, nil
			})
			for _, k := range []string{"a", "b"} {
				if _, err := f.Do(ctx, store, k, true); !errors.Is(err, errStop) {
					t.Fatal(err)
				}
			}
			done := make(chan error, 1)
			go func() { _, err := f.Do(ctx, store, "c", false); done <- err }()
			<-running
			a := []string{"stats", "--dsn", dsn}
			if b.Name == "postgres" {
				a = append(a, "--driver", "postgres")
			}
			r := cli(a...)
			close(release)
			r.must(t, 0, a)
			if stat(t, r.stdout, "flows running") != 1 || stat(t, r.stdout, "flows stopped or abandoned (lease over)") != 2 {
				t.Errorf("stats:\n%s\nwant 1 flow running, 2 stopped", r.stdout)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}
