// Package postgres is the PostgreSQL dialect of the key protocol, for the
// lib/pq ("postgres") and pgx ("pgx", "pgx/v5") drivers.
//
// # Protocol
//
// A fresh call costs one write: the claim takes a transaction-scoped advisory
// lock on a 64-bit hash of (scope, key) and, in the same round trip, reads the
// live record (through idempotency_claim, so that under READ COMMITTED the
// read sees every commit made before the lock was free). fn runs, then one
// INSERT writes the key with its value, and the lock goes away with the
// transaction.
//
// The claim never waits: pg_try_advisory_xact_lock answers at once. A twin
// that finds the lock taken reports the key Held; the caller rolls back,
// which gives its connection back to the pool, and claims again after a
// short, growing pause, until the holder has committed (the claim then finds
// its record and replays it), has rolled back (the claim takes the lock), or
// the wait bound has passed. A waiting twin therefore holds a connection for
// one round trip per try, not for the whole wait. A twin that slipped past
// the lock (under REPEATABLE READ or SERIALIZABLE its snapshot can predate
// the holder's commit) is caught by the INSERT: ON CONFLICT leaves a live row
// alone, or the database raises 40001, and the attempt starts over.
//
// Advisory locks share one number space per database, across schemas: the
// lock number of a key in a table other than idempotency_keys therefore
// includes the table's name, so two key tables never make each other's
// keys wait. An application that takes bigint advisory locks of its own
// may, very rarely, see a key as held while it holds a lock of the same
// number: a short wait, never a wrong answer.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/lib/pq"

	"github.com/exactlyonce/idempotency/dialects"
)

// Dialect implements dialects.Dialect for PostgreSQL.
type Dialect struct {
	sql   Statements
	flows dialects.FlowStatements
}

var (
	_ dialects.Dialect = (*Dialect)(nil)
	_ dialects.Schema  = (*Dialect)(nil)
)

// The database/sql driver names the dialect serves.
func init() {
	for _, name := range []string{"postgres", "pgx", "pgx/v5", "pgx/v4", "cloudsqlpostgres"} {
		dialects.Register(name, func(table string) dialects.Dialect { return New(table) })
	}
}

// New returns the PostgreSQL dialect for the key table named table (which
// may be schema-qualified; it must already be a safe identifier).
func New(table string) *Dialect {
	return &Dialect{sql: SQL(table), flows: FlowSQL(table)}
}

// Statements are the key protocol's statements for one key table, shared by
// the database/sql dialect and the pgx store, so that both kinds of store
// can work on one database.
type Statements struct {
	// Claim ($1 lock, $2 scope, $3 key) takes the key's advisory lock
	// without waiting and reads its live record: locked, fingerprint,
	// value, failed. It also marks its transaction as one that claimed a
	// key (a transaction-local setting, idempotency.claimed), which Save
	// checks.
	Claim string
	// ClaimProbes reports whether Claim also catches, under REPEATABLE
	// READ and SERIALIZABLE, a row committed after the transaction's
	// snapshot (idempotency_claim does, for the default table). Without
	// it, such a row is caught later, by the save.
	ClaimProbes bool
	// Save ($1 scope, $2 key, $3 fingerprint, $4 value, $5 failed, $6 TTL
	// in microseconds) inserts the record or replaces an expired one; it
	// affects no row when a live record holds the key, or when it does not
	// run in the transaction whose Claim marked it: fn ended that
	// transaction (an Exec of COMMIT or ROLLBACK), and the save would
	// otherwise commit on its own. Claimed tells the two apart.
	Save string
	// Claimed reports whether the statement runs in a transaction that
	// Claim marked.
	Claimed string
	// Insert (Save's parameters) inserts the record, failing with 23505
	// when any row holds the key: for a pipeline, where an error, unlike
	// a row count, keeps the COMMIT queued after it from running. Send
	// DeleteExpired before it, under the key's lock.
	Insert string
	// Lookup ($1 scope, $2 key) reads the live record: fingerprint, value,
	// failed.
	Lookup string
	// Lock ($1 lock) takes the key's advisory lock without waiting, and
	// says whether the transaction runs at READ COMMITTED: locked,
	// readCommitted. Sent in a pipeline before Read, it lets Read take its
	// snapshot after the lock, without idempotency_claim; see Read.
	Lock string
	// Read ($1 scope, $2 key) reads the key's row, live or expired:
	// fingerprint, value, failed, live. Under READ COMMITTED, sent after
	// Lock, it sees every commit made before the lock came free, as
	// idempotency_claim's read does. Under REPEATABLE READ and
	// SERIALIZABLE its snapshot is the transaction's, taken before the
	// lock: a claim that took the lock and read no row must then be made
	// again with Claim, whose probe sees a row committed since.
	Read string
	// DeleteExpired ($1 scope, $2 key) removes the key's expired row.
	DeleteExpired string
	// Prune deletes up to %d expired rows (format the limit in; see
	// Dialect.Prune).
	Prune string
}

// SQL returns the statements for the key table named table.
func SQL(table string) Statements {
	// The TTL counts from the save, just before COMMIT (clock_timestamp),
	// not from the transaction's start (now()).
	const values = `VALUES ($1, $2, $3, $4, $5, now(), clock_timestamp() + $6::float8 * interval '1 microsecond')`
	return Statements{
		Claim:       claimStatement(table) + "\nWHERE set_config('" + claimedSetting + "', 'on', true) = 'on'",
		ClaimProbes: table == dialects.DefaultTable,
		Save: `INSERT INTO ` + table + ` AS k (scope, key, fingerprint, value, failed, created_at, expires_at)
SELECT $1::text, $2::text, $3::bytea, $4::bytea, $5::boolean, now(), clock_timestamp() + $6::float8 * interval '1 microsecond'
WHERE ` + claimed + `
ON CONFLICT (scope, key) DO UPDATE SET
	fingerprint = excluded.fingerprint, value = excluded.value, failed = excluded.failed,
	created_at = excluded.created_at, expires_at = excluded.expires_at
WHERE k.expires_at <= now()`,
		Insert: `INSERT INTO ` + table + ` (scope, key, fingerprint, value, failed, created_at, expires_at)
` + values,
		Claimed: `SELECT ` + claimed,
		Lookup: `SELECT fingerprint, value, failed FROM ` + table + `
WHERE scope = $1 AND key = $2 AND expires_at > now()`,
		Lock: `SELECT pg_try_advisory_xact_lock($1), current_setting('transaction_isolation') = 'read committed'`,
		Read: `SELECT fingerprint, value, failed, expires_at > now() FROM ` + table + `
WHERE scope = $1 AND key = $2`,
		DeleteExpired: `DELETE FROM ` + table + ` WHERE scope = $1 AND key = $2 AND expires_at <= now()`,
		// Batches locked with SKIP LOCKED: a pruner never waits on a row a
		// live call holds, and two pruners never wait on each other. A row
		// is named by (tableoid, ctid): a ctid alone is unique only within
		// one partition or inheritance child, so on a partitioned key table
		// it would also name live rows of other partitions.
		Prune: `DELETE FROM ` + table + ` WHERE (tableoid, ctid) IN (
	SELECT tableoid, ctid FROM ` + table + ` WHERE expires_at <= now() LIMIT %d FOR UPDATE SKIP LOCKED)`,
	}
}

// claimedSetting is the transaction-local setting that Claim sets and Save
// checks. A setting made with set_config(..., true) lasts until its
// transaction ends (or a savepoint rolls back past it): a statement that
// runs after fn's own COMMIT or ROLLBACK no longer sees it.
const claimedSetting = "idempotency.claimed"

// claimed is true in a transaction that Claim marked.
const claimed = "coalesce(current_setting('" + claimedSetting + "', true), '') = 'on'"

// claimStatement takes the lock and reads the live row. For the default table
// it calls idempotency_claim (migration 00002), which reads after locking;
// for another table, one statement reads with a snapshot taken before the
// lock, so a twin that commits in that instant is caught later, by Save.
func claimStatement(table string) string {
	if table == dialects.DefaultTable {
		return `SELECT locked, fingerprint, value, failed FROM idempotency_claim($1, $2, $3)`
	}
	return `SELECT pg_try_advisory_xact_lock($1), k.fingerprint, k.value, k.failed
FROM (VALUES (1)) AS one (x)
LEFT JOIN ` + table + ` AS k ON k.scope = $2 AND k.key = $3 AND k.expires_at > now()`
}

// Name returns "postgres".
func (d *Dialect) Name() string { return "postgres" }

// Claim takes the key's advisory lock and reads its live record in one
// statement, without waiting; see the package documentation.
func (d *Dialect) Claim(ctx context.Context, tx dialects.Querier, k dialects.Key, _ []byte, _ time.Duration) (dialects.Claim, dialects.Record, error) {
	var (
		locked bool
		rec    dialects.Record
		failed sql.NullBool
	)
	err := tx.QueryRowxContext(ctx, d.sql.Claim, k.Lock, k.Scope, k.Key).Scan(&locked, &rec.Fingerprint, &rec.Value, &failed)
	if err != nil {
		return 0, rec, err
	}
	rec.Failed = failed.Bool
	claim, rec := ClaimOf(locked, rec)
	return claim, rec, nil
}

// ClaimOf sorts what a claim read: whether it took the lock, and the live
// record (a nil Fingerprint when there is none). A live record wins over
// the lock (roll back and replay it); no record and no lock means a twin
// holds the key.
func ClaimOf(locked bool, rec dialects.Record) (dialects.Claim, dialects.Record) {
	switch {
	case rec.Fingerprint != nil:
		return dialects.Found, rec
	case locked:
		return dialects.Claimed, dialects.Record{}
	}
	return dialects.Held, dialects.Record{}
}

// Save inserts the record, or replaces an expired one. When it saved
// nothing, it asks whether it ran in the claim's transaction: if not, fn
// ended that transaction, and it says so.
func (d *Dialect) Save(ctx context.Context, tx dialects.Querier, k dialects.Key, rec dialects.Record, ttl time.Duration) (bool, error) {
	res, err := tx.ExecContext(ctx, d.sql.Save, k.Scope, k.Key, rec.Fingerprint, rec.Value, rec.Failed, ttl.Microseconds())
	if err != nil {
		return false, SaveError(err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("rows affected: %w", err)
	}
	if n == 1 {
		return true, nil
	}
	var in bool
	if err := tx.QueryRowxContext(ctx, d.sql.Claimed).Scan(&in); err != nil {
		return false, err
	}
	if !in {
		return false, Ended()
	}
	return false, nil
}

// Ended is Save's error when it ran outside the claim's transaction: fn
// sent COMMIT or ROLLBACK itself. Nothing marks the key on Postgres (its
// claim is a lock, gone with the transaction), so a retry runs fn again.
func Ended() error {
	return fmt.Errorf("%w: fn sent COMMIT or ROLLBACK itself, and the key was not saved; whatever fn wrote before a COMMIT, and everything after it, committed on its own, and a retry runs fn again", dialects.ErrTransactionEnded)
}

// SaveError says what a failed save means when fn ignored an error: Postgres
// refuses every statement after an error until the transaction ends, so
// nothing fn did escaped it. Other errors are returned as they are.
func SaveError(err error) error {
	if sqlState(err) == "25P02" {
		return fmt.Errorf("fn's transaction was aborted by an error fn did not return, so nothing was committed (return every error of tx from fn): %w", err)
	}
	return err
}

// Lookup reads the key's live record.
func (d *Dialect) Lookup(ctx context.Context, q dialects.Querier, k dialects.Key) (dialects.Record, bool, error) {
	var rec dialects.Record
	err := q.QueryRowxContext(ctx, d.sql.Lookup, k.Scope, k.Key).Scan(&rec.Fingerprint, &rec.Value, &rec.Failed)
	if errors.Is(err, sql.ErrNoRows) {
		return rec, false, nil
	}
	return rec, err == nil, err
}

// DeleteExpired removes the key's row if it has expired.
func (d *Dialect) DeleteExpired(ctx context.Context, q dialects.Querier, k dialects.Key) error {
	_, err := q.ExecContext(ctx, d.sql.DeleteExpired, k.Scope, k.Key)
	return err
}

// Prune deletes up to limit expired rows, skipping rows that are locked.
//
// The limit is a literal, not a parameter: with LIMIT $1 a cached generic
// plan guesses the batch size, and on a partitioned table it then hashes
// every row of the table to find the batch (126 ms against 26 ms for 5000
// of 400,000 rows), where a known limit looks each row up by its ctid.
func (d *Dialect) Prune(ctx context.Context, q dialects.Querier, limit int) (int64, error) {
	res, err := q.ExecContext(ctx, fmt.Sprintf(d.sql.Prune, limit))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// Classify sorts errors of lib/pq and pgx by SQLSTATE.
func (d *Dialect) Classify(err error) dialects.Class { return Classify(err) }

// Classify sorts errors of lib/pq and pgx (database/sql or native) by
// SQLSTATE.
func Classify(err error) dialects.Class {
	state := sqlState(err)
	if state == "" {
		switch {
		case errors.Is(err, pq.ErrInFailedTransaction), errors.Is(err, pgx.ErrTxCommitRollback):
			// lib/pq's and pgx's word, at COMMIT, that an earlier error
			// had aborted the transaction: the server rolled it back.
			return dialects.Definite
		case strings.HasPrefix(err.Error(), "pq: unexpected transaction status idle"):
			// lib/pq at COMMIT, when the connection is in no
			// transaction: fn sent its own COMMIT or ROLLBACK.
			return dialects.Ended
		case dialects.ConnectionLost(err):
			return dialects.Lost
		}
		return dialects.Unknown
	}
	switch {
	case state == "40001", state == "40P01":
		return dialects.Retry
	case state == "40003":
		// statement_completion_unknown: CockroachDB's "result is
		// ambiguous" for a COMMIT that may or may not have committed.
		return dialects.Unknown
	case state == "55P03":
		return dialects.LockTimeout
	case len(state) == 5 && (state[:2] == "08" || state[:2] == "57" && state != "57014"):
		// Connection exceptions and operator intervention (admin shutdown,
		// crash shutdown, cannot connect now): the server may not have
		// finished what it was doing. 57014 (query cancelled) is definite.
		return dialects.Lost
	default:
		return dialects.Definite
	}
}

// sqlState is the SQLSTATE an error of lib/pq or pgx carries, or "" when it
// did not come from the server.
func sqlState(err error) string {
	var coded interface{ SQLState() string }
	if errors.As(err, &coded) {
		return coded.SQLState()
	}
	return ""
}
