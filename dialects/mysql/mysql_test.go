package mysql_test

import (
	"context"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/dialects/mysql"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/migrations"
)

// TestMySQL8Claim runs the claim MySQL 8 gets (its session's lock wait set
// to a second and put back) on the MySQL or MariaDB server the tests have,
// which accepts the same statements. A twin's row reports Held; the
// session's own lock wait survives on the pooled connection, even when the
// call's context ends while the claim waits.
func TestMySQL8Claim(t *testing.T) {
	ctx := context.Background()
	dsn := testdb.Backend{Name: "mysql", Driver: "mysql", Kind: "mysql"}.DSN(t)
	var dbs [2]*sqlx.DB
	for i := range dbs {
		db, err := sqlx.Open("mysql", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		dbs[i] = db
	}
	db, other := dbs[0], dbs[1]
	if err := migrations.Up(ctx, db); err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1) // every statement of db on one connection
	if _, err := db.Exec(`SET SESSION innodb_lock_wait_timeout = 37`); err != nil {
		t.Fatal(err)
	}
	d := mysql.New(dialects.DefaultTable)
	d.UseMySQL8()
	k := dialects.Key{Scope: "s", Key: "k"}
	fp := make([]byte, 32) // the column's size: a SHA-256

	// A twin holds the key: its row is inserted and not committed.
	twin, err := other.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, _, err := d.Claim(ctx, twin, k, fp, time.Hour); err != nil || c != dialects.Claimed {
		t.Fatalf("the twin's claim: %v, %v", c, err)
	}

	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := d.Claim(cctx, tx, k, fp, time.Hour)
	_ = tx.Rollback()
	if err != nil || c != dialects.Held {
		t.Fatalf("a claim while the twin holds the key: %v, %v; want Held", c, err)
	}
	var wait int
	if err := db.Get(&wait, `SELECT @@SESSION.innodb_lock_wait_timeout`); err != nil {
		t.Fatal(err)
	}
	if wait != 37 {
		t.Errorf("the pooled session's innodb_lock_wait_timeout is %d after the claim, want its own 37", wait)
	}

	// Once the twin commits, the claim finds the key taken.
	if _, err := d.Save(ctx, twin, k, dialects.Record{Fingerprint: fp, Value: []byte("1")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := twin.Commit(); err != nil {
		t.Fatal(err)
	}
	tx, err = db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err = d.Claim(ctx, tx, k, fp, time.Hour)
	_ = tx.Rollback()
	if err != nil || c != dialects.Taken {
		t.Fatalf("a claim after the twin committed: %v, %v; want Taken", c, err)
	}
}
