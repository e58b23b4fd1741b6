package mysql_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/dialects"
	idmysql "github.com/exactlyonce/idempotency/dialects/mysql"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestClassifyTiDB: TiDB's own error numbers, sorted as its documentation
// describes them, beside the MySQL numbers TiDB shares.
func TestClassifyTiDB(t *testing.T) {
	d := idmysql.New(dialects.DefaultTable)
	for _, c := range []struct {
		number  uint16
		want    dialects.Class
		message string
	}{
		{9007, dialects.Retry, ""},               // write conflict at COMMIT (optimistic)
		{8005, dialects.Retry, ""},               // write conflict, txnStartTS is stale
		{8002, dialects.Retry, ""},               // SELECT FOR UPDATE met a commit conflict
		{8022, dialects.Retry, ""},               // commit failed and was rolled back
		{8028, dialects.Retry, ""},               // schema changed under the transaction
		{8147, dialects.Retry, ""},               // lazy uniqueness check aborted the transaction
		{9001, dialects.Retry, ""},               // PD timeout
		{9005, dialects.Retry, ""},               // region unavailable
		{1213, dialects.Retry, ""},               // deadlock (pessimistic)
		{1205, dialects.LockTimeout, ""},         // lock wait timeout (pessimistic)
		{1062, dialects.Definite, ""},            // a duplicate of fn's own
		{8004, dialects.Definite, ""},            // transaction too large
		{8025, dialects.Definite, ""},            // entry too large
		{8229, dialects.Definite, ""},            // transaction outlived its lock TTL
		{1105, dialects.Definite, "other error"}, // TiDB's catch-all
		// A pessimistic statement retried after a write conflict past the
		// lock wait.
		{1105, dialects.LockTimeout, "lock wait timeout"},
	} {
		if got := d.Classify(&mysql.MySQLError{Number: c.number, Message: c.message}); got != c.want {
			t.Errorf("error %d %q: class %v, want %v", c.number, c.message, got, c.want)
		}
	}
}

// eachTiDBMode runs test, in parallel, in each of TiDB's transaction modes,
// with two pools on one fresh, migrated database and the dialect.
func eachTiDBMode(t *testing.T, test func(t *testing.T, mode string, db, other *sqlx.DB, d *idmysql.Dialect)) {
	for _, mode := range []string{"pessimistic", "optimistic"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b := testdb.TiDB(mode)
			dsn := b.DSN(t)
			db, other := b.OpenDSN(t, dsn), b.Connect(t, dsn)
			test(t, mode, db, other, idmysql.New(dialects.DefaultTable))
		})
	}
}

// TestTiDBClaimSeesCommittedKey: on TiDB in both transaction modes, the
// claim of a committed key reports Taken at once. In optimistic mode a
// plain INSERT would check the key only at COMMIT: the claim would succeed,
// fn would run, and COMMIT would fail with a duplicate key.
func TestTiDBClaimSeesCommittedKey(t *testing.T) {
	eachTiDBMode(t, func(t *testing.T, _ string, db, _ *sqlx.DB, d *idmysql.Dialect) {
		ctx := context.Background()
		k := dialects.Key{Scope: "s", Key: "k"}
		fp := make([]byte, 32)
		tx := claimIn(t, d, db, k, fp, time.Hour)
		if ok, err := d.Save(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte("1")}, time.Hour); err != nil || !ok {
			t.Fatalf("save: %v, %v", ok, err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}

		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		c, _, err := d.Claim(ctx, tx, k, fp, time.Hour)
		if err != nil || c != dialects.Taken {
			t.Fatalf("a claim of the committed key: %v, %v; want Taken", c, err)
		}
	})
}

// TestTiDBTwins: a twin that has claimed the key and not committed. In
// pessimistic mode the claim waits for its lock a second at most and reports
// Held, and the session's own lock wait survives. In optimistic mode
// nothing is locked: the claim succeeds, and once the twin commits, this
// transaction's COMMIT fails with a write conflict, which is retried.
func TestTiDBTwins(t *testing.T) {
	eachTiDBMode(t, func(t *testing.T, mode string, db, other *sqlx.DB, d *idmysql.Dialect) {
		ctx := context.Background()
		db.SetMaxOpenConns(1) // every statement of db on one connection
		if _, err := db.Exec(`SET SESSION innodb_lock_wait_timeout = 37`); err != nil {
			t.Fatal(err)
		}
		k := dialects.Key{Scope: "s", Key: "k"}
		fp := make([]byte, 32)
		twin := claimIn(t, d, other, k, fp, time.Hour)

		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		began := time.Now()
		c, _, err := d.Claim(ctx, tx, k, fp, time.Hour)
		took := time.Since(began)
		if mode == "pessimistic" {
			_ = tx.Rollback()
			if err != nil || c != dialects.Held || took > 3*time.Second {
				t.Fatalf("a claim while the twin holds the key: %v, %v after %v; want Held within a second or so", c, err, took)
			}
			var wait int
			if err := db.Get(&wait, `SELECT @@SESSION.innodb_lock_wait_timeout`); err != nil {
				t.Fatal(err)
			}
			if wait != 37 {
				t.Errorf("the session's innodb_lock_wait_timeout is %d after the claim, want its own 37", wait)
			}
			return
		}
		if err != nil || c != dialects.Claimed {
			t.Fatalf("an optimistic claim beside a running twin: %v, %v; want Claimed (nothing is locked)", c, err)
		}
		if _, err := d.Save(ctx, twin, k, dialects.Record{Fingerprint: fp, Value: []byte("1")}, time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := twin.Commit(); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Save(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: []byte("2")}, time.Hour); err != nil {
			t.Fatal(err)
		}
		err = tx.Commit()
		var me *mysql.MySQLError
		if !errors.As(err, &me) || d.Classify(err) != dialects.Retry {
			t.Fatalf("COMMIT after the twin committed: %v; want a write conflict, classified Retry", err)
		}
	})
}
