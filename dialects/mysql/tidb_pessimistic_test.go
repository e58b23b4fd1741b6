package mysql_test

import (
	"context"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/dialects"
	idmysql "github.com/exactlyonce/idempotency/dialects/mysql"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestTiDBPessimisticClaim: on a TiDB whose sessions are optimistic, the
// transaction StartTx has made pessimistic holds the key it claims: a
// twin's claim, in a transaction made pessimistic the same way, waits for
// it and reports Held, then Taken once it commits. The session's own mode
// is untouched: the next plain transaction on that connection holds no
// lock, so a plain twin claims the same key beside it, as in optimistic
// mode.
func TestTiDBPessimisticClaim(t *testing.T) {
	ctx := context.Background()
	b := testdb.TiDB("optimistic")
	dsn := b.DSN(t)
	db, other := b.OpenDSN(t, dsn), b.Connect(t, dsn)
	db.SetMaxOpenConns(1) // every statement of db on one connection
	p := idmysql.NewPessimistic(dialects.DefaultTable)
	fp := make([]byte, 32)
	begin := func(db *sqlx.DB, k dialects.Key) (*sqlx.Tx, dialects.Claim, error) {
		t.Helper()
		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback() })
		if err := p.StartTx(ctx, tx); err != nil {
			t.Fatalf("StartTx: %v", err)
		}
		c, _, err := p.Claim(ctx, tx, k, fp, time.Hour)
		return tx, c, err
	}

	k := dialects.Key{Scope: "s", Key: "pessimistic"}
	holder, c, err := begin(db, k)
	if err != nil || c != dialects.Claimed {
		t.Fatalf("the first claim: %v, %v", c, err)
	}
	twin, c, err := begin(other, k)
	_ = twin.Rollback()
	if err != nil || c != dialects.Held {
		t.Fatalf("a twin's claim while the key is held: %v, %v; want Held", c, err)
	}
	if ok, err := p.Save(ctx, holder, k, dialects.Record{Fingerprint: fp, Value: []byte("1")}, time.Hour); err != nil || !ok {
		t.Fatalf("save: %v, %v", ok, err)
	}
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	twin, c, err = begin(other, k)
	_ = twin.Rollback()
	if err != nil || c != dialects.Taken {
		t.Fatalf("a twin's claim after the holder committed: %v, %v; want Taken", c, err)
	}

	// The same connection, in a plain transaction: optimistic still.
	var mode string
	if err := db.Get(&mode, `SELECT @@tidb_txn_mode`); err != nil || mode != "optimistic" {
		t.Fatalf("the session's tidb_txn_mode after pessimistic transactions: %q, %v; want optimistic", mode, err)
	}
	d := idmysql.New(dialects.DefaultTable)
	k = dialects.Key{Scope: "s", Key: "plain"}
	claimIn(t, d, db, k, fp, time.Hour)
	plainTwin, err := other.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = plainTwin.Rollback() }()
	if c, _, err := d.Claim(ctx, plainTwin, k, fp, time.Hour); err != nil || c != dialects.Claimed {
		t.Fatalf("a plain twin's claim beside a plain transaction on the same connection: %v, %v; want Claimed (optimistic: nothing locked)", c, err)
	}
}
