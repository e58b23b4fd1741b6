package mysql

// TiDB speaks MySQL's protocol and runs this dialect's statements, with two
// differences that matter to the claim, and error numbers of its own.
//
// Its transactions are pessimistic by default, and optimistic when
// tidb_txn_mode is 'optimistic' (for a session or the whole cluster).
//
//   - Pessimistic: an INSERT locks the key and waits for a twin's lock, as
//     InnoDB does. innodb_lock_wait_timeout bounds the wait, in whole
//     seconds from 1 (TiDB's system variable has a minimum of 1 and no
//     SET STATEMENT to bound one statement), so the claim sets the
//     session's wait to one second and puts it back, as on MySQL 8.
//   - Optimistic: nothing is locked before COMMIT, and a plain INSERT
//     checks the key lazily, at COMMIT (unless tidb_constraint_check_in_place
//     is ON): a replay would run fn and fail its COMMIT with a duplicate
//     key. An INSERT ... ON DUPLICATE KEY UPDATE has to read the row it
//     would update, so it checks in place, in the transaction's snapshot,
//     in both modes; the claim is one (it also takes an expired row's
//     place), and no row changed means the key is taken. A twin that is
//     still running is invisible: each twin runs fn, the first to COMMIT
//     wins, and the others fail at COMMIT with a write conflict (9007),
//     which is retried, and their next claim replays the winner.
//
// # Optimistic mode and twins
//
// In optimistic mode a burst of calls with one key (a client's retry storm)
// runs fn once per call: 64 at once ran it 64 times, one committed and 63
// rolled back, replayed the winner, and did the work for nothing. The
// effect is still exactly once. NewPessimistic is the dialect whose key
// transactions are pessimistic whatever tidb_txn_mode says: the first
// statement of each transaction a call begins is BEGIN PESSIMISTIC, which
// TiDB takes over the transaction database/sql has just begun (empty, so it
// is reused rather than committed, pkg/sessiontxn/isolation/base.go), and
// which does not touch the session's tidb_txn_mode, so the caller's own
// transactions on that pooled connection stay optimistic. A twin's claim
// then waits for the key's lock, as in pessimistic mode, and replays.
//
// The trade-off: one more statement per call (on a one-node TiDB a fresh
// call took 1.11 to 1.17 times as long as with New's dialect, while a storm
// of 64 was answered as soon or sooner), fn's own statements in that
// transaction lock as they write (and may wait, or deadlock, which is
// retried) instead of meeting at COMMIT, and the transaction takes the
// session's isolation level rather than WithIsolation's. A caller's
// transaction joined with DoTx keeps its mode: a BEGIN there would commit
// the caller's work, so it is never sent. The same effect without code: a
// pool of the store's own opened with tidb_txn_mode='pessimistic' in its
// DSN, which makes every transaction of that pool pessimistic, keyless ones
// (InTx) included.
//
// References: TiDB's pessimistic and optimistic transaction models
// (docs.pingcap.com/tidb/stable/pessimistic-transaction,
// /optimistic-transaction), its constraints page on when uniqueness is
// checked (/constraints), its error codes (/error-codes), and, in its
// source, pkg/executor/insert.go (the in-place check of INSERT IGNORE and ON DUPLICATE KEY UPDATE) and
// pkg/sessionctx/variable/sysvar.go (innodb_lock_wait_timeout's range).

import (
	"context"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/exactlyonce/idempotency/dialects"
)

const flavorTiDB = 3

// isTiDB reports whether a VERSION() string is TiDB's
// ("8.0.11-TiDB-v8.5.0", ...).
func isTiDB(version string) bool { return strings.Contains(strings.ToLower(version), "-tidb-") }

// tidbClass sorts TiDB's own error numbers (docs.pingcap.com/tidb/stable/
// error-codes); ok is false for numbers that are not TiDB's. MySQL's numbers
// that TiDB shares (1062, 1205, 1213) are sorted by Classify as on MySQL:
// after 1213 TiDB, like InnoDB, has rolled the pessimistic transaction
// back (pkg/session/tidb.go).
//
// An error TiDB returns from COMMIT means the transaction did not commit:
// when it cannot tell (ErrResultUndetermined), it closes the connection
// instead of answering (pkg/server/conn.go), which Classify sees as Lost,
// an unknown outcome.
func tidbClass(me *mysql.MySQLError) (c dialects.Class, ok bool) {
	if tidbLockWaitTimeout(me) {
		return dialects.LockTimeout, true
	}
	switch me.Number {
	case 9007, // ErrWriteConflict: another transaction wrote the key first; rolled back
		8005, // ErrWriteConflictInTiDB: "Write Conflict, txnStartTS is stale"
		8002, // ErrForUpdateCantRetry: SELECT FOR UPDATE met a commit conflict; "the application can safely retry the whole transaction"
		8022, // ErrTxnRetryable: "the transaction commit fails and has been rolled back"
		8028, // ErrInfoSchemaChanged: a table's schema changed under the transaction; "can safely retry"
		8027, // ErrInfoSchemaExpired: this server's schema is out of date; nothing committed
		8147, // ErrLazyUniquenessCheckFailure: the transaction was aborted (tidb_constraint_check_in_place_pessimistic OFF)
		9004: // ErrResolveLockTimeout: too many conflicting locks to resolve
		return dialects.Retry, true
	case 9001, // ErrPDServerTimeout
		9002, // ErrTiKVServerTimeout
		9003, // ErrTiKVServerBusy
		9005, // ErrRegionUnavailable
		9010: // ErrTiKVStaleCommand
		// The cluster is busy or a node is down: the statement failed and
		// the transaction did not commit. Running it again after a pause
		// is safe and may succeed.
		return dialects.Retry, true
	case 8004, // ErrTxnTooLarge
		8025, // ErrEntryTooLarge: one value over txn-entry-size-limit (6 MB by default)
		8229, // ErrLockExpire: the transaction outlived its lock TTL
		9006, // ErrGCTooEarly: the transaction outlived tidb_gc_life_time
		8141: // ErrAssertionFailed: data and index disagree
		// Running it again would fail the same way.
		return dialects.Definite, true
	}
	return 0, false
}

// tidbLockWaitTimeout reports a lock wait that ran out. TiDB says so with
// 1205, as MySQL does, except when a pessimistic statement that it retried
// after a write conflict runs past innodb_lock_wait_timeout: then client-go's
// ErrLockWaitTimeout reaches the client unconverted, as 1105 "lock wait
// timeout" (pkg/sessiontxn/isolation, handleAfterPessimisticLockError).
func tidbLockWaitTimeout(me *mysql.MySQLError) bool {
	return me.Number == 1105 && me.Message == "lock wait timeout"
}

// Pessimistic is the dialect of NewPessimistic: the MySQL dialect, whose
// key transactions on TiDB are pessimistic whatever tidb_txn_mode says.
type Pessimistic struct{ *Dialect }

var (
	_ dialects.Dialect = (*Pessimistic)(nil)
	_ dialects.Schema  = (*Pessimistic)(nil)
)

// NewPessimistic returns the dialect for the key table named table whose
// key transactions (Do, Run) on a TiDB in optimistic mode wait for a twin
// instead of running fn beside it (see tidb.go for the trade-off). On MySQL
// and MariaDB, whose transactions always lock, it is New's. Pass it to
// idempotency.New with WithDialect.
func NewPessimistic(table string) *Pessimistic { return &Pessimistic{New(table)} }

// StartTx makes the transaction just begun for a call pessimistic, on TiDB;
// the database/sql driver sends it before the claim (dialects.TxStarter).
// It must come before anything that writes: BEGIN commits what the
// transaction did. The first call of a dialect reads the server's version
// before it, which commits nothing.
func (p *Pessimistic) StartTx(ctx context.Context, tx dialects.Querier) error {
	flavor, err := p.detect(ctx, tx)
	if err != nil || flavor != flavorTiDB {
		return err
	}
	_, err = tx.ExecContext(ctx, "BEGIN PESSIMISTIC")
	return err
}
