// Package sqlite is the SQLite dialect of the key protocol, for
// modernc.org/sqlite ("sqlite") and mattn/go-sqlite3 ("sqlite3").
//
// # Protocol
//
// SQLite has one writer at a time, so the claim is simply the attempt's first
// write: an INSERT of the key with no value. It takes the database's write
// lock (waiting up to the connection's busy_timeout) and holds it until the
// transaction ends, so no twin can run while fn does. When the key is
// already there the INSERT fails on the primary key, the attempt rolls back,
// and the stored row is read. Save fills the row with the value.
//
// Waiting is SQLite's own: a twin, like any other writer, waits for the
// write lock in BEGIN (with _txlock=immediate) or at the claim, for the
// connection's busy_timeout, and the call's context ends that wait. When the
// lock is still taken after it, Do pauses and tries again within its wait
// bound.
//
// Recommended DSN: _pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)
// (and _txlock=immediate with modernc.org/sqlite). Without a busy timeout,
// a writer that finds the database locked gets SQLITE_BUSY at once; Do then
// retries within its wait bound.
//
// Times are integers: milliseconds since 1970 by SQLite's clock.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/exactlyonce/idempotency/dialects"
)

// Dialect implements dialects.Dialect for SQLite.
type Dialect struct {
	claim, save, lookup, deleteExpired, prune string
	flows                                     dialects.FlowStatements
}

var (
	_ dialects.Dialect     = (*Dialect)(nil)
	_ dialects.Schema      = (*Dialect)(nil)
	_ dialects.ReadFirster = (*Dialect)(nil)
	_ dialects.Prepared    = (*Dialect)(nil)
	_ dialects.Settler     = (*Dialect)(nil)
	_ dialects.OneWriter   = (*Dialect)(nil)
)

// The database/sql driver names the dialect serves.
func init() {
	for _, name := range []string{"sqlite", "sqlite3"} {
		dialects.Register(name, func(table string) dialects.Dialect { return New(table) })
	}
}

// NowMillis is SQLite's clock in milliseconds since 1970, as an SQL
// expression that any version of SQLite evaluates: the time the key table
// stores and compares.
const NowMillis = `CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)`

// New returns the SQLite dialect for the key table named table.
func New(table string) *Dialect {
	return &Dialect{
		claim: `INSERT INTO ` + table + ` (scope, "key", fingerprint, value, failed, created_at, expires_at)
VALUES (?, ?, ?, NULL, 0, ` + NowMillis + `, ` + NowMillis + ` + ?)`,
		// The TTL counts from this statement, just before COMMIT.
		save: `UPDATE ` + table + ` SET value = ?, failed = ?, expires_at = ` + NowMillis + ` + ?
WHERE scope = ? AND "key" = ? AND fingerprint = ? AND value IS NULL`,
		lookup: `SELECT fingerprint, value, failed FROM ` + table + `
WHERE scope = ? AND "key" = ? AND expires_at > ` + NowMillis,
		deleteExpired: `DELETE FROM ` + table + ` WHERE scope = ? AND "key" = ? AND expires_at <= ` + NowMillis,
		prune: `DELETE FROM ` + table + ` WHERE rowid IN (
	SELECT rowid FROM ` + table + ` WHERE expires_at <= ` + NowMillis + ` LIMIT ?)`,
		flows: flowSQL(table),
	}
}

// Name returns "sqlite".
func (d *Dialect) Name() string { return "sqlite" }

// Statements returns the claim, the save and the read: SQLite parses a
// statement each time it is sent unprepared, which costs about as much as
// running one of these.
func (d *Dialect) Statements() []string { return []string{d.claim, d.save, d.lookup} }

// ReadFirst returns dialects.ReadFirstAdaptive. On one connection a read
// first costs a fresh call about 18µs of CPU (5% of a call with a
// synchronous commit), and saves a replay about 48µs (the write lock, the
// failed INSERT and the ROLLBACK): reading first pays while more than a
// quarter of the calls replay.
func (d *Dialect) ReadFirst() dialects.ReadFirst { return dialects.ReadFirstAdaptive }

// Claim inserts the key's row with no value, taking the write lock.
func (d *Dialect) Claim(ctx context.Context, tx dialects.Querier, k dialects.Key, fingerprint []byte, ttl time.Duration) (dialects.Claim, dialects.Record, error) {
	var none dialects.Record
	_, err := tx.ExecContext(ctx, d.claim, k.Scope, k.Key, fingerprint, ttl.Milliseconds())
	if err != nil {
		if code(err)&0xff == 19 { // SQLITE_CONSTRAINT: the key's row exists
			return dialects.Taken, none, nil
		}
		return 0, none, err
	}
	return dialects.Claimed, none, nil
}

// Save fills the claimed row with the value.
func (d *Dialect) Save(ctx context.Context, tx dialects.Querier, k dialects.Key, rec dialects.Record, ttl time.Duration) (bool, error) {
	filled, err := d.Settle(ctx, tx, k, rec, ttl)
	if err != nil {
		return false, err
	}
	if !filled {
		// SQLite rolls a transaction back by itself after some errors
		// (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM); fn went on without it.
		return false, fmt.Errorf("%w (an error inside fn, such as a full disk, was not returned); writes fn made after it ran outside the transaction and may have committed", dialects.ErrTransactionEnded)
	}
	return true, nil
}

// Settle fills the claimed row with rec if it is there, and reports
// whether it was. It is Save's statement: outside any transaction, only a
// claim that fn's own commit committed is there.
func (d *Dialect) Settle(ctx context.Context, q dialects.Querier, k dialects.Key, rec dialects.Record, ttl time.Duration) (bool, error) {
	res, err := q.ExecContext(ctx, d.save, rec.Value, rec.Failed, ttl.Milliseconds(), k.Scope, k.Key, rec.Fingerprint)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("rows affected: %w", err)
	}
	return n == 1, nil
}

// OneWriter returns true: a transaction that has claimed (or tried to)
// holds SQLite's write lock and reads the latest state.
func (d *Dialect) OneWriter() bool { return true }

// Lookup reads the key's live record. Another transaction never sees a
// claimed row unless it committed without its value (fn committed itself
// and the call could not settle it): Lookup then returns an error that
// wraps dialects.ErrTransactionEnded.
func (d *Dialect) Lookup(ctx context.Context, q dialects.Querier, k dialects.Key) (dialects.Record, bool, error) {
	var rec dialects.Record
	err := q.QueryRowxContext(ctx, d.lookup, k.Scope, k.Key).Scan(&rec.Fingerprint, &rec.Value, &rec.Failed)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return rec, false, nil
	case err != nil:
		return rec, false, err
	case rec.Value == nil:
		return dialects.Record{}, false, errUnsaved
	}
	return rec, true, nil
}

// errUnsaved is Lookup's error for a claim that committed without its
// value.
var errUnsaved = fmt.Errorf("%w: an earlier call with this key committed its claim without saving a value (its fn committed the transaction itself, and the call did not finish); what it did is unknown, so the key is refused until it expires", dialects.ErrTransactionEnded)

// DeleteExpired removes the key's row if it has expired.
func (d *Dialect) DeleteExpired(ctx context.Context, q dialects.Querier, k dialects.Key) error {
	_, err := q.ExecContext(ctx, d.deleteExpired, k.Scope, k.Key)
	return err
}

// Prune deletes up to limit expired rows by rowid.
func (d *Dialect) Prune(ctx context.Context, q dialects.Querier, limit int) (int64, error) {
	res, err := q.ExecContext(ctx, d.prune, limit)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// Classify sorts SQLite result codes.
func (d *Dialect) Classify(err error) dialects.Class {
	c := code(err)
	if c == -1 {
		return dialects.Unknown
	}
	switch c & 0xff {
	case 5, 6: // SQLITE_BUSY, SQLITE_LOCKED
		return dialects.Busy
	case 1: // SQLITE_ERROR, which says in its text alone that no transaction was open
		if strings.Contains(err.Error(), "no transaction is active") {
			return dialects.Ended
		}
	case 10, 11, 13: // SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL: durability in doubt
		return dialects.Unknown
	}
	return dialects.Definite
}

// code returns the (extended) SQLite result code carried by err, or -1. It
// knows modernc.org/sqlite's *Error (a Code method) and mattn/go-sqlite3's
// Error (Code and ExtendedCode fields) without importing either, and finds
// them through errors joined or wrapped (goose joins its errors).
func code(err error) int {
	switch e := err.(type) {
	case nil:
		return -1
	case interface{ Code() int }:
		return e.Code()
	}
	if c, ok := mattnCode(err); ok {
		return c
	}
	switch e := err.(type) {
	case interface{ Unwrap() error }:
		return code(e.Unwrap())
	case interface{ Unwrap() []error }:
		for _, inner := range e.Unwrap() {
			if c := code(inner); c != -1 {
				return c
			}
		}
	}
	return -1
}

// mattnCode reads the code of a mattn/go-sqlite3 Error.
func mattnCode(err error) (int, bool) {
	v := reflect.ValueOf(err)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct || v.Type().PkgPath() != "github.com/mattn/go-sqlite3" {
		return 0, false
	}
	if f := v.FieldByName("ExtendedCode"); f.IsValid() && f.CanInt() && f.Int() != 0 {
		return int(f.Int()), true
	}
	if f := v.FieldByName("Code"); f.IsValid() && f.CanInt() {
		return int(f.Int()), true
	}
	return 0, false
}
