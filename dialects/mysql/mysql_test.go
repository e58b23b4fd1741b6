package mysql_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/dialects/mysql"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestMySQL8Claim runs the claim MySQL 8 gets (its session's lock wait set
// to a second and put back) on the MySQL or MariaDB server the tests have,
// which accepts the same statements. A twin's row reports Held; the
// session's own lock wait survives on the pooled connection, even when the
// call's context ends while the claim waits.
//
// With multiStatements=true and interpolateParams=true in the DSN the claim
// sends its three statements as one query: a fresh claim is one round trip
// instead of three, and the session's setting is put back all the same.
func TestMySQL8Claim(t *testing.T) {
	for _, multi := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "multiStatements"}[multi], func(t *testing.T) { testMySQL8Claim(t, multi) })
	}
}

func testMySQL8Claim(t *testing.T, multi bool) {
	ctx := context.Background()
	b := testdb.Backend{Name: "mysql", Driver: "mysql", Kind: "mysql"}
	dsn := b.DSN(t)
	if multi {
		cfg, err := gomysql.ParseDSN(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MultiStatements, cfg.InterpolateParams = true, true
		dsn = cfg.FormatDSN()
	}
	db, other := b.OpenDSN(t, dsn), b.Connect(t, dsn)
	db.SetMaxOpenConns(1) // every statement of db on one connection
	if _, err := db.Exec(`SET SESSION innodb_lock_wait_timeout = 37`); err != nil {
		t.Fatal(err)
	}
	d := mysql.New(dialects.DefaultTable)
	d.UseMySQL8()
	k := dialects.Key{Scope: "s", Key: "k"}
	fp := make([]byte, 32) // the column's size: a SHA-256

	// A twin holds the key: its row is inserted and not committed.
	twin := claimIn(t, d, other, k, fp, time.Hour)

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
	c, rec, err := d.Claim(ctx, tx, k, fp, time.Hour)
	_ = tx.Rollback()
	switch {
	case multi && (err != nil || c != dialects.Found || string(rec.Value) != "1"):
		// In one query the claim reads the row that holds the key too.
		t.Fatalf("a claim after the twin committed: %v, %q, %v; want Found with its value", c, rec.Value, err)
	case !multi && (err != nil || c != dialects.Taken):
		t.Fatalf("a claim after the twin committed: %v, %v; want Taken", c, err)
	}

	// Once the row has expired, the claim takes its place, with no DELETE
	// first (and nothing to wait for).
	if _, err := db.Exec(`UPDATE idempotency_keys SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND`); err != nil {
		t.Fatal(err)
	}
	tx, err = db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err = d.Claim(ctx, tx, k, fp, time.Hour)
	var live int
	if err == nil {
		err = tx.Get(&live, `SELECT COUNT(*) FROM idempotency_keys WHERE expires_at > UTC_TIMESTAMP(6) AND failed = 2`)
	}
	_ = tx.Rollback()
	if err != nil || c != dialects.Claimed || live != 1 {
		t.Fatalf("a claim over the expired row: %v, %v, %d claimed rows in its transaction; want Claimed in the row's place", c, err, live)
	}

	// A fresh claim, its round trips counted at the wire.
	proxied, target := testdb.Rehost(t, "mysql", dsn, "127.0.0.1:0")
	p, err := faultproxy.Start(target)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	proxied, _ = testdb.Rehost(t, "mysql", proxied, p.Addr())
	counted := b.Connect(t, proxied)
	counted.SetMaxOpenConns(1)
	if _, err := counted.Exec(`SET SESSION innodb_lock_wait_timeout = 37`); err != nil {
		t.Fatal(err)
	}
	tx, err = counted.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := p.Trips()
	c, _, err = d.Claim(ctx, tx, dialects.Key{Scope: "s", Key: "fresh"}, fp, time.Hour)
	trips := p.Trips() - before
	_ = tx.Rollback()
	// Plain: SET, the INSERT prepared then executed (no
	// interpolateParams), SET.
	want := map[bool]int64{false: 4, true: 1}[multi]
	if err != nil || c != dialects.Claimed || trips != want {
		t.Errorf("a fresh claim: %v, %v in %d round trips; want Claimed in %d", c, err, trips, want)
	}
	if err := counted.Get(&wait, `SELECT @@SESSION.innodb_lock_wait_timeout`); err != nil || wait != 37 {
		t.Errorf("the session's innodb_lock_wait_timeout is %d (%v) after a fresh claim, want its own 37", wait, err)
	}
}

// TestSaveInPlace: the claim writes the row at the size the save gives it,
// so that InnoDB changes it in place: the save keeps the placeholder's
// length (padding a shorter value) and the claim's expiry (when fn took
// less than the slack), and the read strips the padding. A longer value,
// a slow fn, and rows written before the placeholder came, are saved and
// read as they are.
func TestSaveInPlace(t *testing.T) {
	ctx := context.Background()
	db := testdb.Backend{Name: "mysql", Driver: "mysql", Kind: "mysql"}.Open(t)
	d := mysql.New(dialects.DefaultTable)
	fp := make([]byte, 32)
	type row struct {
		Length  int       `db:"length"`
		Failed  int       `db:"failed"`
		Expires time.Time `db:"expires_at"`
	}
	read := func(q dialects.Querier, key string) row {
		t.Helper()
		var r row
		if err := sqlx.GetContext(ctx, q, &r, "SELECT LENGTH(value) AS length, failed, expires_at FROM idempotency_keys WHERE scope = '' AND `key` = ?", key); err != nil {
			t.Fatal(err)
		}
		return r
	}
	// call claims key, checks the claimed row, waits, saves value and
	// commits; it returns the row as claimed and as saved.
	call := func(key string, value []byte, ttl, wait time.Duration) (claimed, saved row) {
		t.Helper()
		k := dialects.Key{Key: key}
		tx := claimIn(t, d, db, k, fp, ttl)
		if _, ok, err := d.Lookup(ctx, tx, k); ok || err != nil && !errors.Is(err, dialects.ErrTransactionEnded) {
			t.Fatalf("the claiming transaction reads its claimed row as a record (%v, %v)", ok, err)
		}
		claimed = read(tx, key)
		time.Sleep(wait)
		if ok, err := d.Save(ctx, tx, k, dialects.Record{Fingerprint: fp, Value: value}, ttl); !ok || err != nil {
			t.Fatalf("save %s: %v, %v", key, ok, err)
		}
		saved = read(tx, key)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		rec, ok, err := d.Lookup(ctx, db, k)
		if !ok || err != nil || string(rec.Value) != string(value) || rec.Failed {
			t.Fatalf("read %s: %q (failed %v), %v, %v; want %q", key, rec.Value, rec.Failed, ok, err, value)
		}
		return claimed, saved
	}
	value := func(n int) []byte { return []byte(`"` + strings.Repeat("x", n-2) + `"`) }

	// The first value sizes the placeholder of the claims after it.
	call("first", value(100), time.Hour, 0)
	claimed, saved := call("shorter", value(10), time.Hour, 0)
	if claimed.Failed != 2 || claimed.Length < 100 || saved.Length != claimed.Length || !saved.Expires.Equal(claimed.Expires) || saved.Failed != 0 {
		t.Errorf("a shorter value: claimed %+v, saved %+v; want the claim's length and expiry kept, failed 2 then 0", claimed, saved)
	}
	claimed, saved = call("longer", value(1000), time.Hour, 0)
	if saved.Length != 1000 || !saved.Expires.Equal(claimed.Expires) {
		t.Errorf("a value longer than the placeholder: claimed %+v, saved %+v; want it whole, with the claim's expiry", claimed, saved)
	}
	// A TTL of 400ms has a slack of 50ms: a save 200ms after the claim
	// moves the expiry to the TTL from the save.
	claimed, saved = call("slow", value(10), 400*time.Millisecond, 200*time.Millisecond)
	if moved := saved.Expires.Sub(claimed.Expires); moved < 100*time.Millisecond {
		t.Errorf("a save 200ms after the claim, TTL 400ms: the expiry moved by %v; want it at the TTL from the save", moved)
	}

	// A row as earlier versions saved it: no padding.
	if _, err := db.ExecContext(ctx, "INSERT INTO idempotency_keys (scope, `key`, fingerprint, value, failed, created_at, expires_at) "+
		"VALUES ('', 'old', ?, '{\"a\":1}', TRUE, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 HOUR)", fp); err != nil {
		t.Fatal(err)
	}
	rec, ok, err := d.Lookup(ctx, db, dialects.Key{Key: "old"})
	if !ok || err != nil || string(rec.Value) != `{"a":1}` || !rec.Failed {
		t.Errorf("a row saved by an earlier version: %q (failed %v), %v, %v", rec.Value, rec.Failed, ok, err)
	}
}

// TestClassifyMySQL: the MySQL and MariaDB numbers that end a transaction
// and may be retried, the lock wait, a lost connection, and the rest.
func TestClassifyMySQL(t *testing.T) {
	d := mysql.New(dialects.DefaultTable)
	for _, c := range []struct {
		number uint16
		want   dialects.Class
	}{
		{1213, dialects.Retry}, // deadlock: InnoDB rolled the transaction back
		// MariaDB 11.6.2 and later under REPEATABLE READ
		// (innodb_snapshot_isolation, on by default): a row changed since
		// the snapshot; the transaction was rolled back as after 1213.
		{1020, dialects.Retry},
		{1205, dialects.LockTimeout},
		{1927, dialects.Lost}, // connection killed
		{1062, dialects.Definite},
		{1146, dialects.Definite}, // no such table
	} {
		if got := d.Classify(&gomysql.MySQLError{Number: c.number}); got != c.want {
			t.Errorf("error %d: class %v, want %v", c.number, got, c.want)
		}
	}
}

// TestDeleteExpiredWaitsForNoTwin: after a claim found the key taken by a
// row that turned out expired, the call deletes that row and claims again.
// A twin may have done so first and hold the key with its new row: on
// MariaDB the delete then reports the lock at once (a lock-wait timeout, for
// the engine to wait within WithWait as for a held key) rather than wait
// out the twin's whole fn under the server's lock wait.
func TestDeleteExpiredWaitsForNoTwin(t *testing.T) {
	ctx := context.Background()
	db := testdb.Backend{Name: "mysql", Driver: "mysql", Kind: "mysql"}.Open(t)
	var version string
	if err := db.Get(&version, `SELECT VERSION()`); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(version, "MariaDB") {
		t.Skipf("%s: MySQL 8 cannot bound one statement's lock wait", version)
	}
	d := mysql.New(dialects.DefaultTable)
	k := dialects.Key{Scope: "s", Key: "k"}
	fp := make([]byte, 32)
	twin := claimIn(t, d, db, k, fp, time.Hour)

	done := make(chan error, 1)
	go func() { done <- d.DeleteExpired(ctx, db, k) }()
	select {
	case err := <-done:
		if d.Classify(err) != dialects.LockTimeout {
			t.Fatalf("DeleteExpired beside a twin's claim: %v; want a lock-wait timeout", err)
		}
	case <-time.After(5 * time.Second):
		_ = twin.Rollback() // let the delete finish
		t.Fatal("DeleteExpired waited on the twin's row")
	}
}

// claimIn begins a transaction on db and claims k in it, and fails t unless
// the claim succeeds. A transaction still open at t's end is rolled back.
func claimIn(t *testing.T, d *mysql.Dialect, db *sqlx.DB, k dialects.Key, fp []byte, ttl time.Duration) *sqlx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	if c, _, err := d.Claim(ctx, tx, k, fp, ttl); err != nil || c != dialects.Claimed {
		t.Fatalf("the claim of %q: %v, %v", k.Key, c, err)
	}
	return tx
}
