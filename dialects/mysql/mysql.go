// Package mysql is the MySQL, MariaDB and TiDB dialect of the key protocol, for
// go-sql-driver/mysql ("mysql").
//
// # Protocol
//
// InnoDB has no transaction-scoped advisory lock, and a locking read of a
// missing row takes gap locks that twins share (then both insert and
// deadlock), so the claim is the row itself: the first statement of the
// attempt INSERTs the key's row, with a placeholder for the value (see
// below). When a committed row holds the key
// the INSERT fails at once with a duplicate key (1062): the attempt rolls
// back and reads the row with a plain autocommit SELECT, which sees the
// latest commit at every isolation level.
//
// When a twin's uncommitted row holds the key, the INSERT would wait for its
// lock. It does not wait on MariaDB (innodb_lock_wait_timeout = 0 for that
// one statement, through SET STATEMENT): it fails at once with 1205, the
// attempt rolls back, which gives the connection back to the pool, and the
// caller claims again after a short, growing pause, within its wait bound.
// MySQL 8 has neither SET STATEMENT nor a lock wait under one second, so
// there the session's wait is set to one second around the INSERT and put
// back after it: a waiting twin holds a connection for up to a second per
// try. Nobody waits on a lock for long, so twins whose holder rolls back do
// not deadlock each other.
//
// Every error from the claim ends the attempt: after 1213 the server has
// already rolled the transaction back, and a statement sent after it would
// run outside any transaction and commit on its own. Nothing that writes
// data is sent after a failed claim: on MySQL 8 the session's lock wait is
// put back, then the attempt rolls back.
//
// The claim writes the row at the size the save will give it, so that the
// save changes it in place: InnoDB then writes the changed bytes alone,
// instead of moving a grown row and, for a new expiry, deleting and
// inserting its entry in the expiry index (work that purge finishes later).
// The claimed row's value is a placeholder of spaces as long as the values
// recently saved (up to 2 KiB), failed is 2 (claimed, not saved), and its
// expiry is the TTL plus a slack (an eighth of the TTL, at most a second).
// The save writes the value padded with spaces to the placeholder's length
// (JSON ignores them; Lookup strips them), failed 0 or 1, and leaves the
// expiry alone when fn took less than the slack; otherwise it moves it to
// the TTL from the save. A key thus replays for at least its TTL after the
// save, and at most the slack longer. No other transaction ever sees a
// claimed row: the save fills it before COMMIT. Rows written by earlier
// versions (a NULL value while claimed, no padding) replay as they are.
//
// Save fills the claimed row with the value by its primary key, and checks
// that the row is still there. InnoDB rolls a transaction back on a
// deadlock, and the statements after it run on their own, in autocommit
// mode: when fn ignores such an error, the row is gone and Save fails with
// an error that wraps dialects.ErrTransactionEnded (fn's later writes may
// have committed; the call is not safe to retry blindly). Preventing that
// would take a session without autocommit, whose setting would have to be
// put back on every pooled connection at the cost of a round trip per call.
//
// # TiDB
//
// On MySQL 8 and TiDB the claim is an INSERT ... ON DUPLICATE KEY UPDATE
// that takes an expired row's place, so that no DELETE, which neither can
// keep from waiting the server's lock wait, comes before it. TiDB,
// recognised by its VERSION(), needs that form anyway: it checks the key at
// once in both of its transaction modes. Its own error numbers are
// classified too. See tidb.go.
package mysql

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/exactlyonce/idempotency/dialects"
)

// Dialect implements dialects.Dialect for MySQL 8, MariaDB 10.5+ and TiDB.
type Dialect struct {
	claimMariaDB, save, lookup, deleteExpired, prune string
	upsert                                           string // MySQL 8's and TiDB's claim
	claimRead                                        string // its row count and the key's live row
	deleteExpiredMariaDB                             string // with no lock wait
	saveMariaDB, saveTiDB                            string // only inside a transaction

	// pad sizes the claimed row's placeholder from the values saved.
	pad padding
	// packet refuses a value over the server's max_allowed_packet.
	packet packetLimit

	// flavor is 0 until the first claim asks the server, then 1 for MariaDB
	// (which can bound one statement's lock wait with SET STATEMENT), 2
	// for MySQL (which cannot: the session value is set and restored) or 3
	// for TiDB (see tidb.go).
	flavor atomic.Int32

	flows dialects.FlowStatements // see flows.go

	// multi says whether the claim's statements go in one query
	// (claimOnce): multiUnknown until the first claim on MySQL 8 or TiDB.
	multi atomic.Int32
}

var (
	_ dialects.Dialect     = (*Dialect)(nil)
	_ dialects.Schema      = (*Dialect)(nil)
	_ dialects.ReadFirster = (*Dialect)(nil)
)

// The database/sql driver names the dialect serves.
func init() {
	for _, name := range []string{"mysql"} {
		dialects.Register(name, func(table string) dialects.Dialect { return New(table) })
	}
}

const (
	flavorMariaDB = 1
	flavorMySQL   = 2
)

// claimed is the failed column of a row claimed and not saved yet.
const claimed = "2"

// noLockWait makes a MariaDB statement fail at once with 1205 where it
// would wait for another transaction's row lock.
const noLockWait = `SET STATEMENT innodb_lock_wait_timeout = 0 FOR `

// New returns the MySQL/MariaDB dialect for the key table named table (a
// safe identifier, optionally schema-qualified).
func New(table string) *Dialect {
	insert := `INSERT INTO ` + table + ` (scope, ` + "`key`" + `, fingerprint, value, failed, created_at, expires_at)
VALUES (?, ?, ?, REPEAT(' ', ?), ` + claimed + `, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)`
	deleteExpired := `DELETE FROM ` + table + ` WHERE scope = ? AND ` + "`key`" + ` = ? AND expires_at <= UTC_TIMESTAMP(6)`
	// In place: the value padded to the placeholder's length (the value
	// column on the right is the claimed row's), and the claim's expiry
	// kept unless the TTL from now goes beyond it. The TTL counts from
	// this statement, just before COMMIT, not from the claim.
	save := `UPDATE ` + table + ` SET value = CONCAT(?, REPEAT(' ', GREATEST(LENGTH(value) - ?, 0))), failed = ?,
expires_at = GREATEST(expires_at, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
WHERE scope = ? AND ` + "`key`" + ` = ? AND fingerprint = ? AND failed = ` + claimed
	return &Dialect{
		// MySQL 8's and TiDB's claim takes an expired row's place (the
		// assignments run in order, so expires_at goes last): one row
		// affected for a new row, two for an expired one replaced, none
		// where a live row holds the key. There is no DELETE to wait on.
		upsert: insert + `
ON DUPLICATE KEY UPDATE fingerprint = IF(expires_at <= UTC_TIMESTAMP(6), VALUES(fingerprint), fingerprint),
value = IF(expires_at <= UTC_TIMESTAMP(6), VALUES(value), value),
failed = IF(expires_at <= UTC_TIMESTAMP(6), VALUES(failed), failed),
created_at = IF(expires_at <= UTC_TIMESTAMP(6), VALUES(created_at), created_at),
expires_at = IF(expires_at <= UTC_TIMESTAMP(6), VALUES(expires_at), expires_at)`,
		claimMariaDB: noLockWait + insert,
		save:         save,
		// MariaDB says whether a transaction is open: after fn's own
		// COMMIT the save would run, and commit, on its own.
		saveMariaDB: save + ` AND @@in_transaction = 1`,
		// TiDB has no in_transaction; its tidb_current_ts is the open
		// transaction's start, and 0 where a statement runs on its own.
		saveTiDB: save + ` AND @@tidb_current_ts <> 0`,
		lookup: `SELECT fingerprint, value, failed FROM ` + table + `
WHERE scope = ? AND ` + "`key`" + ` = ? AND expires_at > UTC_TIMESTAMP(6)`,
		// After the upsert, in the same query: ROW_COUNT() is the upsert's.
		claimRead: `SELECT ROW_COUNT(), k.fingerprint, k.value, k.failed FROM (SELECT 1) AS one
LEFT JOIN ` + table + ` AS k ON k.scope = ? AND k.` + "`key`" + ` = ? AND k.expires_at > UTC_TIMESTAMP(6)`,
		deleteExpired:        deleteExpired,
		deleteExpiredMariaDB: noLockWait + deleteExpired,
		prune:                `DELETE FROM ` + table + ` WHERE expires_at <= UTC_TIMESTAMP(6) ORDER BY expires_at LIMIT ?`,
		flows:                flowSQL(table),
	}
}

// Name returns "mysql".
func (d *Dialect) Name() string { return "mysql" }

// ReadFirst returns dialects.ReadFirstAdaptive. On MariaDB a replay that
// claims first costs four statements (BEGIN, the failed INSERT, ROLLBACK,
// the read), a replay that reads first one, and a fresh call that reads
// first six instead of five; on MySQL 8 and TiDB, whose claim sets and
// restores the lock wait around its INSERT, six, one, and eight instead of
// seven, or, with the claim in one query (claimOnce), three, one and six
// instead of five. Reading first pays while more than a quarter of the
// calls replay.
func (d *Dialect) ReadFirst() dialects.ReadFirst { return dialects.ReadFirstAdaptive }

// Claim inserts the key's row with a placeholder for the value, without
// waiting for a twin's row lock (up to a second on MySQL 8); see the package
// documentation.
func (d *Dialect) Claim(ctx context.Context, tx dialects.Querier, k dialects.Key, fingerprint []byte, ttl time.Duration) (dialects.Claim, dialects.Record, error) {
	var none dialects.Record
	flavor, err := d.detect(ctx, tx)
	if err != nil {
		return 0, none, err
	}
	args := []any{k.Scope, k.Key, fingerprint, d.pad.size(), (ttl + slack(ttl)).Microseconds()}
	var res claimResult
	switch flavor {
	case flavorMariaDB:
		if _, err = tx.ExecContext(ctx, d.claimMariaDB, args...); err == nil {
			res.inserted = 1
		}
	default: // MySQL 8, TiDB
		res, err = d.claimBounded(ctx, tx, d.upsert, args, k)
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch {
		case me.Number == 1062: // ER_DUP_ENTRY: a committed row holds the key
			return dialects.Taken, none, nil
		case d.Classify(me) == dialects.LockTimeout: // a twin's row holds it
			return dialects.Held, none, nil
		}
	}
	if err != nil {
		return 0, none, err
	}
	if res.inserted == 0 {
		// The upsert (MySQL 8, TiDB) reports a live committed row that
		// holds the key by changing nothing; in one query it also read it.
		if res.found && res.failed != 2 {
			res.rec.Failed = res.failed == 1
			res.rec.Value = bytes.TrimRight(res.rec.Value, " ") // as Lookup
			return dialects.Found, res.rec, nil
		}
		return dialects.Taken, none, nil
	}
	return dialects.Claimed, none, nil
}

// claimBounded runs insert (the claim) with its lock wait bounded by
// setting the session's to a second and putting it back, for MySQL 8 and
// TiDB, which cannot bound one statement's (MariaDB's SET STATEMENT), and
// reports how many rows it inserted. Where the DSN lets the driver send
// several statements at once (multiStatements=true with
// interpolateParams=true), the three go in one round trip (claimOnce);
// otherwise in three. The statements run to the end whatever ctx does
// (the INSERT waits a second at most): a connection goes back to the pool
// only with the session's own setting.
func (d *Dialect) claimBounded(ctx context.Context, tx dialects.Querier, insert string, args []any, k dialects.Key) (claimResult, error) {
	if err := ctx.Err(); err != nil {
		return claimResult{}, err
	}
	ctx = context.WithoutCancel(ctx)
	if d.multi.Load() != multiNo {
		if res, err, sent := d.claimOnce(ctx, tx, insert, args, k); sent {
			return res, err
		}
	}
	if _, err := tx.ExecContext(ctx, setLockWait); err != nil {
		return claimResult{}, err
	}
	r, err := tx.ExecContext(ctx, insert, args...)
	// Restoring a session variable writes no data, so it is safe even after
	// a claim error.
	if _, rerr := tx.ExecContext(ctx, restoreLockWait); err == nil {
		err = rerr
	}
	if err != nil {
		return claimResult{}, err
	}
	n, err := r.RowsAffected()
	if err != nil {
		return claimResult{}, fmt.Errorf("rows affected: %w", err)
	}
	return claimResult{inserted: n}, nil
}

// claimResult is what a claim on MySQL 8 or TiDB learnt: the rows its
// upsert changed, and, when it changed none and read the key in the same
// query, the live row that holds the key (found).
type claimResult struct {
	inserted int64
	found    bool
	rec      dialects.Record
	failed   int
}

const (
	// setLockWait keeps the session's lock wait and sets it to a second.
	setLockWait = "SET @idempotency_lock_wait = @@SESSION.innodb_lock_wait_timeout, SESSION innodb_lock_wait_timeout = 1"
	// restoreLockWait puts it back.
	restoreLockWait = "SET SESSION innodb_lock_wait_timeout = @idempotency_lock_wait"
)

// Whether the driver sends several statements in one query (d.multi).
const (
	multiUnknown int32 = iota
	multiYes
	multiNo
)

// claimOnce sends setLockWait, insert, a read of its row count with the
// key's live row (claimRead) and restoreLockWait as one query, and reports
// whether it could (sent). A replay that claims first thus learns the
// record in the same round trip. The server stops at the first statement
// that fails: after a failed insert (a twin's lock) the setting is put
// back in a second round trip. The first claim of a store finds out
// whether the DSN allows several statements; where it does not (refused),
// every claim takes three round trips.
func (d *Dialect) claimOnce(ctx context.Context, tx dialects.Querier, insert string, args []any, k dialects.Key) (res claimResult, err error, sent bool) {
	rows, err := tx.QueryContext(ctx, setLockWait+"; "+insert+"; "+d.claimRead+"; "+restoreLockWait,
		append(args, k.Scope, k.Key)...)
	if err == nil {
		res, err = scanClaim(rows)
	}
	if err == nil {
		d.multi.Store(multiYes)
		return res, nil, true
	}
	if refused(err) {
		// Not one query after all, and nothing of it ran (claims that began
		// at once may each find out).
		d.multi.Store(multiNo)
		return claimResult{}, nil, false
	}
	d.multi.CompareAndSwap(multiUnknown, multiYes)
	if _, rerr := tx.ExecContext(ctx, restoreLockWait); rerr != nil {
		return claimResult{}, errors.Join(err, rerr), true
	}
	return claimResult{}, err, true
}

// scanClaim reads the one row of the query's result sets that has one
// (claimRead's, among the SETs and the INSERT), and reads the rest, so
// that an error of a later statement is seen.
func scanClaim(rows *sql.Rows) (res claimResult, err error) {
	defer func() {
		if cerr := rows.Close(); err == nil {
			err = cerr
		}
	}()
	read := false
	for {
		for rows.Next() {
			var failed sql.NullInt64
			if err := rows.Scan(&res.inserted, &res.rec.Fingerprint, &res.rec.Value, &failed); err != nil {
				return claimResult{}, err
			}
			res.found, res.failed, read = failed.Valid, int(failed.Int64), true
		}
		if err := rows.Err(); err != nil {
			return claimResult{}, err
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return claimResult{}, err
	}
	if !read {
		return claimResult{}, errors.New("the claim's query returned no row count")
	}
	return res, nil
}

// refused reports whether err says that the server would not run a query
// of several statements at all. Without multiStatements, MySQL parses them
// as one (a syntax error, 1064) and TiDB refuses them (8130); without
// interpolateParams the driver asks the server to prepare them, which MySQL
// refuses as a syntax error and TiDB with 8115.
func refused(err error) bool {
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		return false
	}
	switch me.Number {
	case 1064, 8115, 8130:
		return true
	}
	return false
}

func (d *Dialect) detect(ctx context.Context, q dialects.Querier) (int32, error) {
	if f := d.flavor.Load(); f != 0 {
		return f, nil
	}
	var version string
	if err := q.QueryRowxContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return 0, err
	}
	f := int32(flavorMySQL)
	switch {
	case isTiDB(version):
		f = flavorTiDB
	case strings.Contains(strings.ToLower(version), "mariadb"):
		f = flavorMariaDB
	}
	d.flavor.Store(f)
	return f, nil
}

// slack is how much longer than its TTL the claim makes a key live, so
// that a save within it can keep the claim's expiry (and the row in place).
func slack(ttl time.Duration) time.Duration { return min(ttl/8, time.Second) }

// Save fills the claimed row with the value, in place when the value fits
// the placeholder. On MariaDB and TiDB it saves only inside a transaction:
// when fn sent COMMIT itself, the claimed row committed with fn's writes,
// and Save then fills it on its own (Settle) and reports that the
// transaction ended. MySQL 8 cannot tell: there the save after fn's COMMIT
// commits on its own, and the call succeeds.
func (d *Dialect) Save(ctx context.Context, tx dialects.Querier, k dialects.Key, rec dialects.Record, ttl time.Duration) (bool, error) {
	if err := d.packet.fits(ctx, tx, len(rec.Value)); err != nil {
		return false, err
	}
	d.pad.saw(len(rec.Value))
	query, checked := d.save, true
	switch d.flavor.Load() { // known: a claim came first
	case flavorMariaDB:
		query = d.saveMariaDB
	case flavorTiDB:
		query = d.saveTiDB
	default:
		checked = false
	}
	n, err := d.fill(ctx, tx, query, k, rec, ttl)
	switch {
	case err != nil:
		return false, err
	case n == 1:
		return true, nil
	case checked:
		// The claimed row is gone (fn rolled back, or a deadlock did), or
		// no transaction is open (fn committed).
		settled, err := d.Settle(ctx, tx, k, rec, ttl)
		if err != nil {
			return false, fmt.Errorf("%w; settling the claimed key failed: %w", dialects.EndedError(false), err)
		}
		return false, dialects.EndedError(settled)
	}
	return false, dialects.EndedError(false)
}

// Settle fills the claimed row with rec, if it is there: outside any
// transaction, only a claim that fn's own COMMIT committed is.
func (d *Dialect) Settle(ctx context.Context, q dialects.Querier, k dialects.Key, rec dialects.Record, ttl time.Duration) (bool, error) {
	n, err := d.fill(ctx, q, d.save, k, rec, ttl)
	return n == 1, err
}

func (d *Dialect) fill(ctx context.Context, q dialects.Querier, query string, k dialects.Key, rec dialects.Record, ttl time.Duration) (int64, error) {
	res, err := q.ExecContext(ctx, query, rec.Value, len(rec.Value), rec.Failed, ttl.Microseconds(), k.Scope, k.Key, rec.Fingerprint)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("rows affected: %w", err)
	}
	return n, nil
}

// Lookup reads the key's live record, without the padding of its value. A
// claimed row is never seen by another transaction unless it committed
// unsaved (fn committed itself and the call could not settle it): Lookup
// then returns an error that wraps dialects.ErrTransactionEnded.
func (d *Dialect) Lookup(ctx context.Context, q dialects.Querier, k dialects.Key) (dialects.Record, bool, error) {
	var (
		rec    dialects.Record
		failed int
	)
	err := q.QueryRowxContext(ctx, d.lookup, k.Scope, k.Key).Scan(&rec.Fingerprint, &rec.Value, &failed)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return rec, false, nil
	case err != nil:
		return rec, false, err
	case failed == 2:
		return rec, false, errUnsaved
	}
	rec.Failed = failed == 1
	// JSON, which the engine stores, never ends with a space.
	rec.Value = bytes.TrimRight(rec.Value, " ")
	return rec, true, nil
}

// errUnsaved is Lookup's error for a claim that committed without its
// record.
var errUnsaved = fmt.Errorf("%w: an earlier call with this key committed its claim without saving a value (its fn committed the transaction itself, and the call did not finish); what it did is unknown, so the key is refused until it expires", dialects.ErrTransactionEnded)

// padding sizes the claimed row's placeholder: as long as the longest value
// saved in the last window of saves, rounded up, so that most saves fit it.
// Values longer than maxPad are left out: the save grows their row.
type padding struct {
	current atomic.Int64 // the placeholder's length for claims now
	peak    atomic.Int64 // the longest value in the window so far
	saves   atomic.Int64
}

const (
	maxPad    = 2048
	padWindow = 256
	padStep   = 32
)

func (p *padding) size() int64 { return p.current.Load() }

// saw records a value of n bytes: a longer placeholder at once; a shorter
// one, the window's longest, at the end of each window.
func (p *padding) saw(n int) {
	l := int64(n+padStep-1) / padStep * padStep
	if l > maxPad {
		l = 0
	}
	for {
		peak := p.peak.Load()
		if l <= peak || p.peak.CompareAndSwap(peak, l) {
			break
		}
	}
	if l > p.current.Load() {
		p.current.Store(l)
	}
	if p.saves.Add(1)%padWindow == 0 {
		p.current.Store(p.peak.Swap(0))
	}
}

// DeleteExpired removes the key's row if it has expired.
//
// A twin may hold the key with a row of its own by then (it deleted the
// expired row first and claimed again), and the delete waits for that row's
// lock. On MariaDB it does not wait: a lock-wait timeout (1205) comes at
// once, and the engine waits for the twin within WithWait. On MySQL 8 and
// TiDB the claim itself replaces an expired row, so the delete runs only
// where a row expired between the claim and the read, and waits the
// server's lock wait (neither can bound one statement's).
func (d *Dialect) DeleteExpired(ctx context.Context, q dialects.Querier, k dialects.Key) error {
	query := d.deleteExpired
	if d.flavor.Load() == flavorMariaDB { // known: a claim came first
		query = d.deleteExpiredMariaDB
	}
	_, err := q.ExecContext(ctx, query, k.Scope, k.Key)
	return err
}

// Prune deletes up to limit expired rows, oldest first.
func (d *Dialect) Prune(ctx context.Context, q dialects.Querier, limit int) (int64, error) {
	res, err := q.ExecContext(ctx, d.prune, limit)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
