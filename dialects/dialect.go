// Package dialects defines what the idempotency protocol needs from a
// database, so that each database's SQL, locking, clock, error codes and
// schema live in one package of their own (postgres, mysql, sqlite), and
// nothing outside those packages branches on a database's name: a
// database/sql driver name finds its dialect in a registry (Open), which
// the dialect packages fill from init (Register), as database/sql drivers
// register themselves.
//
// Two layers:
//
//   - Driver[TTx] is what the protocol engine (the root package) speaks to:
//     begin and claim, commit with the save, roll back, savepoints, lookups,
//     prune and error classes, for transactions of type TTx. A driver may
//     pipeline (the pgx store sends BEGIN with the claim, and the save with
//     COMMIT).
//   - Dialect is one database's statements for database/sql, one round trip
//     each; SQL turns a Dialect and a *sqlx.DB into a Driver[*sqlx.Tx].
//
// Beside the protocol, a dialect may implement Schema: its goose
// migrations (the files are in the migrations package, in a folder named
// as the dialect), its migration lock, which errors mean a missing table,
// and its stats SQL, for the migrations package and the idempotency
// command.
//
// Most users never import this package: idempotency.New picks the dialect
// from the driver name, and pgxstore.New builds its own driver. It is
// exported for idempotency.WithDialect, for dialects registered under other
// driver names, and for drivers of other client APIs.
package dialects

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jmoiron/sqlx"
)

// DefaultTable is the name of the key table the migrations create.
const DefaultTable = "idempotency_keys"

// Querier is what a dialect runs its statements on: a *sqlx.DB, *sqlx.Conn
// or *sqlx.Tx.
type Querier interface {
	sqlx.ExecerContext
	sqlx.QueryerContext
}

var (
	_ Querier = (*sqlx.DB)(nil)
	_ Querier = (*sqlx.Tx)(nil)
	_ Querier = (*sqlx.Conn)(nil)
)

// Key names one stored record.
type Key struct {
	Scope string
	Key   string
	// Lock is a 64-bit hash of Scope and Key, for dialects that lock by number.
	Lock int64
}

// Record is what is stored under a key.
type Record struct {
	Fingerprint []byte // SHA-256 of the call's params
	Value       []byte // JSON of fn's value, or of the remembered failure
	Failed      bool   // Value holds a final failure, not a value
}

// Claim is the result of Dialect.Claim.
type Claim int

const (
	// Claimed: the transaction now owns the key until it ends; no twin can
	// claim it. Save must be called before the transaction commits.
	Claimed Claim = iota
	// Found: a live record exists and was returned with the claim. The
	// transaction must be rolled back; the record is the answer.
	Found
	// Taken: a committed row holds the key; the dialect cannot read it
	// safely inside this transaction. Roll back, then Lookup outside it.
	Taken
	// Held: a twin holds the key right now (its transaction is still
	// running). Claim does not wait for it: roll back, so that the
	// connection goes back to the pool, and claim again a little later.
	Held
)

// Class sorts database errors into what the protocol does with them.
type Class int

const (
	// Unknown: an error that did not come from the server and is not a
	// known way of losing the connection (a closed *sql.DB, a driver or
	// storage failure). It ends the call; after COMMIT the outcome is
	// unknown.
	Unknown Class = iota
	// Definite: the server answered with an error; the statement (and, for
	// COMMIT, the transaction) did not take effect.
	Definite
	// Lost: the connection broke (reset, closed, cut mid-answer). The
	// transaction went with it: before COMMIT nothing of it committed and
	// running it again is safe; during COMMIT the outcome is unknown.
	Lost
	// Retry: serialization failure or deadlock: the transaction was or must
	// be rolled back, and running it again is safe.
	Retry
	// LockTimeout: a lock wait ran out (a twin is still running).
	LockTimeout
	// Busy: the database is locked by another writer (SQLite); try again
	// within the wait bound.
	Busy
	// Ended: the transaction had already ended when the statement came (fn
	// committed or rolled back itself, through its client or an Exec of
	// COMMIT or ROLLBACK); a COMMIT that says so committed nothing of its
	// own, but fn's own commit may have.
	Ended
)

// Dialect is one database's implementation of the key protocol. Every method
// must be safe for concurrent use.
type Dialect interface {
	// Name is the dialect's name ("postgres", "mysql", "sqlite"), which
	// is also its folder in the migrations package.
	Name() string

	// Claim is the first statement of an attempt's transaction. It does
	// not wait for a twin that holds the key (beyond a bound of at most a
	// second where the database cannot do less): it reports Held.
	Claim(ctx context.Context, tx Querier, k Key, fingerprint []byte, ttl time.Duration) (Claim, Record, error)

	// Save writes the record in the transaction that claimed the key, to
	// expire ttl after now by the database clock (now being just before
	// COMMIT, so a slow fn does not shorten the key's life). It reports
	// false when a live record already holds the key (a twin won a race
	// the claim could not see); the attempt then rolls back and starts
	// again. It returns an error wrapping ErrTransactionEnded when the
	// claimed row is gone because the database ended the transaction.
	Save(ctx context.Context, tx Querier, k Key, rec Record, ttl time.Duration) (bool, error)

	// Lookup reads the live (unexpired) record of a key outside any
	// transaction of the caller's.
	Lookup(ctx context.Context, q Querier, k Key) (Record, bool, error)

	// DeleteExpired removes the key's row if it has expired, so that the
	// next attempt can claim it.
	DeleteExpired(ctx context.Context, q Querier, k Key) error

	// Prune deletes at most limit expired rows and returns how many it
	// deleted.
	Prune(ctx context.Context, q Querier, limit int) (int64, error)

	// Classify tells what an error returned by the driver means.
	Classify(err error) Class
}

// TxStarter is a dialect that sends a statement of its own first in every
// transaction the driver begins for a key (Do, Run), before the claim:
// never in a caller's transaction (DoTx), nor in one without a key.
type TxStarter interface {
	StartTx(ctx context.Context, tx Querier) error
}

// ErrTransactionEnded is what a driver wraps when the transaction that
// claimed the key ended before the save: fn committed or rolled it back
// itself, or the database ended it (MySQL on a deadlock, SQLite on a full
// disk) and fn did not return the error, so fn's later statements ran
// outside the transaction. The error that wraps it says which, where the
// driver can tell.
var ErrTransactionEnded = errors.New("the transaction that claimed the key ended before the key was saved")

// Settler is a dialect whose claim writes the key's row (MySQL, SQLite).
// When fn ended the transaction itself, that row committed with fn's commit,
// or went with its rollback. Settle, run outside any transaction, fills the
// row with rec if it is there and still claimed, so that retries replay
// what committed instead of finding a claim that nobody will finish; it
// reports whether it did.
type Settler interface {
	Settle(ctx context.Context, q Querier, k Key, rec Record, ttl time.Duration) (bool, error)
}

// OneWriter is a dialect whose transactions, once they have written (or
// tried to), read the latest committed state, because only one writes at a
// time (SQLite). A call joined to a caller's transaction then reads and
// clears its key in that transaction alone: another connection would wait
// for the caller's write lock.
type OneWriter interface {
	OneWriter() bool
}

// EndedError returns the error, wrapping ErrTransactionEnded, for a call whose
// transaction ended before its save. settled says that the claimed row
// committed with fn's own commit and has since been filled (Settler).
func EndedError(settled bool) error {
	if settled {
		return fmt.Errorf("%w: fn committed it itself; its writes up to then committed, and the key was saved after them, on its own, so a retry replays fn's value (the two were not atomic)", ErrTransactionEnded)
	}
	return fmt.Errorf("%w: fn rolled it back itself, or the database ended it under fn (a deadlock, a full disk, an error fn did not return); what fn wrote before that is gone, and what it wrote after ran outside any transaction and may have committed", ErrTransactionEnded)
}

// ConnectionLost reports whether err says the connection broke, in the ways
// database/sql and the drivers say it: driver.ErrBadConn, an EOF in the
// middle of an answer, a network error, or an error that knows it came
// before anything was sent (pgx's SafeToRetry).
func ConnectionLost(err error) bool {
	var netErr net.Error
	var safe interface{ SafeToRetry() bool }
	switch {
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return true
	case errors.As(err, &netErr):
		return true
	case errors.As(err, &safe) && safe.SafeToRetry():
		return true
	}
	return false
}
