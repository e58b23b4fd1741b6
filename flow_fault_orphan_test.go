//go:build unix

package idempotency_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestFlowFaultsOrphanRow: a flow row left beside the key's record (a
// twin that read no record, inserted a row after the flow had finished,
// and lost its connection before it looked again, or whose insert's
// COMMIT answer was cut) must not make the completer run the flow again:
// the key already holds its answer. The proxy test found this on Postgres
// (the completer resumed such a row ten times, each run writing the steps'
// rows again and failing on the key's primary key), and the chaos run on
// MariaDB (two order rows and two receipt rows for one flow key).
func TestFlowFaultsOrphanRow(t *testing.T) {
	b := testdb.Backend{Name: "sqlite", Driver: "sqlite", Kind: "sqlite"}
	db := b.Open(t)
	db.MustExec(`CREATE TABLE fault_rows (ref VARCHAR(255) NOT NULL)`)
	ctx := context.Background()
	var runs atomic.Int64
	fail := true
	f := idempotency.NewFlow("orphan", func(ctx context.Context, s *idempotency.Steps[*sqlx.Tx], ref string) (string, error) {
		runs.Add(1)
		if _, err := idempotency.Step(s, "order", func(ctx context.Context, tx *sqlx.Tx) (bool, error) {
			_, err := tx.ExecContext(ctx, `INSERT INTO fault_rows (ref) VALUES (?)`, ref)
			return true, err
		}); err != nil {
			return "", err
		}
		if fail {
			return "", errors.New("stop here, resumable")
		}
		return "done", nil
	})
	store, err := idempotency.New(db, idempotency.WithLease(100*time.Millisecond), idempotency.WithCompleterInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	// A run that stops leaves the flow's row; keep a copy of it, as a
	// twin's insert would write it.
	if _, err := f.Do(ctx, store, "k", "r"); err == nil {
		t.Fatal("the first run did not stop")
	}
	db.MustExec(`CREATE TABLE saved AS SELECT * FROM idempotency_flows`)
	db.MustExec(`UPDATE saved SET token = 1, resumes = 0`)
	fail = false
	if v, err := f.Do(ctx, store, "k", "r"); err != nil || v != "done" {
		t.Fatalf("the retry: %q, %v", v, err)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM idempotency_flows`); n != 0 {
		t.Fatalf("%d flow rows after the flow finished", n)
	}
	// The orphan: the flow's row again, its lease run out, beside the
	// key's record.
	db.MustExec(`INSERT INTO idempotency_flows SELECT * FROM saved`)
	db.MustExec(`UPDATE idempotency_flows SET lease_until = 0`)
	before := runs.Load()

	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- idempotency.RunCompleter(cctx, store, f) }()
	for i := 0; i < 100 && runs.Load() == before && count(t, db, `SELECT COUNT(*) FROM idempotency_flows`) != 0; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r := runs.Load() - before; r != 0 {
		t.Errorf("the completer ran the finished flow again (%d runs)", r)
	}
	if n := count(t, db, `SELECT COUNT(*) FROM fault_rows`); n != 1 {
		t.Errorf("%d business rows; want 1", n)
	}
	if v, err := f.Do(ctx, store, "k", "r"); err != nil || v != "done" {
		t.Errorf("a retry after: %q, %v; want the stored answer", v, err)
	}
}
