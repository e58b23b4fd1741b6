package idempotency_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	_ "modernc.org/sqlite"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestReadFirstFallsBackToClaim: the read before the transaction is a
// shortcut, and an error there must not fail a call that the claim would
// carry through. Here SQLite, in its rollback-journal mode with no busy
// timeout, is locked by another connection for 300 ms: the read fails at
// once with SQLITE_BUSY, and the call goes on to claim the key, which waits
// for the lock within WithWait, and commits.
func TestReadFirstFallsBackToClaim(t *testing.T) {
	ctx := context.Background()
	dsn := "file:" + filepath.Join(t.TempDir(), "rf.db") + "?_pragma=journal_mode(DELETE)"
	b := testdb.Backend{Name: "sqlite", Driver: "sqlite", Kind: "sqlite"}
	db := b.OpenDSN(t, dsn)
	if _, err := db.Exec(`CREATE TABLE charges (ref TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	s, err := idempotency.New(db, idempotency.WithReadFirst(true), idempotency.WithWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}

	conn, err := b.Connect(t, dsn).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	released := make(chan error, 1)
	time.AfterFunc(300*time.Millisecond, func() {
		_, err := conn.ExecContext(ctx, "COMMIT")
		released <- err
	})

	v, err := idempotency.Do(ctx, s, "k", nil, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
		_, err := tx.ExecContext(ctx, `INSERT INTO charges (ref) VALUES ('k')`)
		return 1, err
	})
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if err != nil || v != 1 {
		t.Fatalf("Do while the database was locked: %v, %v; want 1 once the lock was released", v, err)
	}
	var n int
	if err := db.Get(&n, `SELECT COUNT(*) FROM charges`); err != nil || n != 1 {
		t.Fatalf("%d charges (%v), want 1", n, err)
	}
}
