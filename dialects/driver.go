package dialects

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// Driver is what the protocol engine needs from one database through one
// client API, for transactions of type TTx: *sqlx.Tx for the database/sql
// drivers (see SQL), pgx.Tx for the pgx store. The engine (claim, fn, save,
// commit, retries, waits, outcome-unknown, hooks) exists once, in the root
// package, and speaks only to this interface, as river speaks to
// riverdriver.Driver[TTx].
//
// A driver owns the transactions it begins: Begin either returns a
// transaction that holds the claimed key, or has already ended it. Every
// method must be safe for concurrent use.
type Driver[TTx any] interface {
	// Name names the database, as its dialect does ("postgres",
	// "mysql", "sqlite").
	Name() string

	// Begin begins a transaction and claims k as its first statement, in
	// as few round trips as the client allows (pgx sends both at once).
	// Only when it returns Claimed and no error is the transaction open;
	// otherwise the driver has rolled it back and tx is the zero value.
	// Waiting for a connection and for BEGIN obeys ctx; once begun, the
	// transaction's fate is not tied to ctx.
	Begin(ctx context.Context, k Key, fingerprint []byte, ttl time.Duration) (tx TTx, c Claim, rec Record, err error)

	// Commit saves rec under k in tx and commits, pipelined where the
	// client allows; a failed save must never be followed by a commit. It
	// always ends tx. Its error wraps ErrConflict when a live record
	// already held the key (nothing committed), ErrTransactionEnded when
	// tx had ended before the save (fn committed or rolled back itself, or
	// the database ended it: see EndedError), and is a *CommitError when
	// the save went through and the commit itself failed (or its outcome
	// is unknown); any other error means the save failed and nothing
	// committed.
	Commit(ctx context.Context, tx TTx, k Key, rec Record, ttl time.Duration) error

	// Rollback ends tx without committing. It is safe on a transaction
	// that has already ended.
	Rollback(tx TTx)

	// BeginPlain begins a transaction with no key, for work that needs the
	// store's transactions without idempotency (the HTTP adapter's requests
	// without a key); CommitPlain commits it. CommitPlain's error wraps
	// ErrTransactionEnded when the driver can tell that fn ended tx
	// itself.
	BeginPlain(ctx context.Context) (TTx, error)
	CommitPlain(tx TTx) error

	// Savepoint, RollbackTo and Release run the protocol inside a
	// transaction the caller holds (DoTx). RollbackTo also releases the
	// savepoint.
	Savepoint(ctx context.Context, tx TTx, name string) error
	RollbackTo(ctx context.Context, tx TTx, name string) error
	Release(ctx context.Context, tx TTx, name string) error

	// Claim and Save are Begin's claim and Commit's save for a transaction
	// the caller holds. Save reports false when a live record already
	// holds the key.
	Claim(ctx context.Context, tx TTx, k Key, fingerprint []byte, ttl time.Duration) (Claim, Record, error)
	Save(ctx context.Context, tx TTx, k Key, rec Record, ttl time.Duration) (bool, error)

	// Lookup reads k's live record outside any transaction; LookupTx reads
	// it inside tx (a caller's transaction sees its own uncommitted key).
	Lookup(ctx context.Context, k Key) (Record, bool, error)
	LookupTx(ctx context.Context, tx TTx, k Key) (Record, bool, error)

	// DeleteExpired removes k's row if it has expired; DeleteExpiredTx
	// does it inside tx, a transaction the caller holds (DoTx), whose
	// failed claim may hold the row's lock (MySQL) or the database's only
	// write lock (SQLite).
	DeleteExpired(ctx context.Context, k Key) error
	DeleteExpiredTx(ctx context.Context, tx TTx, k Key) error

	// Prune deletes at most limit expired rows and reports how many.
	Prune(ctx context.Context, limit int) (int64, error)

	// Classify tells what an error of this client means.
	Classify(err error) Class
}

// Config is what a store passes to the function that opens its driver.
type Config struct {
	// Table is the key table: DefaultTable, or a safe identifier,
	// optionally schema-qualified.
	Table string
	// Isolation is the isolation level of the transactions the driver
	// begins; sql.LevelDefault is the database's.
	Isolation sql.IsolationLevel
}

// ErrConflict is what Commit wraps when a live record already held the key
// (a twin won a race the claim could not see): nothing was committed, and
// the attempt starts again.
var ErrConflict = errors.New("a live record already holds the key")

// CommitError is what Commit returns when the save went through and COMMIT
// failed, or when the connection broke while the commit may have been under
// way: the engine classifies Err to tell a definite failure from an unknown
// outcome.
type CommitError struct{ Err error }

func (e *CommitError) Error() string { return "commit: " + e.Err.Error() }

// Unwrap returns the commit's error.
func (e *CommitError) Unwrap() error { return e.Err }
