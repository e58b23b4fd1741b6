package idempotency

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Errors that Do returns; match them with errors.Is. The returned errors wrap
// these with a detail that says what was wrong.
var (
	// ErrInvalidKey: the key is empty, longer than 255 bytes, or has a byte
	// outside printable ASCII (or the scope is longer than 255 bytes: see
	// ErrInvalidScope). Nothing touched the database.
	ErrInvalidKey = errors.New("idempotency: invalid key")

	// ErrParamsMismatch: the key was already used with other params. fn was
	// not called. Use a new key for a new request.
	ErrParamsMismatch = errors.New("idempotency: key reused with different params")

	// ErrInProgress: a call with the same key was still running when the
	// wait bound (WithWait) ran out. Nothing was stored; retry later.
	ErrInProgress = errors.New("idempotency: a call with the same key is in progress")

	// ErrOutcomeUnknown: the connection failed during COMMIT, so whether the
	// call's writes and its key committed is unknown. Retry with the same
	// key: it replays if they committed and runs fn if they did not.
	ErrOutcomeUnknown = errors.New("idempotency: commit outcome unknown; retry with the same key to resolve it")

	// ErrTransactionEnded: the call's transaction ended before its key was
	// saved, so fn's writes and the key did not commit together. Either fn
	// ended it itself (tx.Commit or tx.Rollback, an ORM's Commit on the
	// key's transaction, an Exec of COMMIT or ROLLBACK), or the database
	// ended it while fn ran (MySQL and MariaDB roll a transaction back on a
	// deadlock, SQLite on a full disk) and fn went on without returning
	// that error. Statements fn made after that point ran outside any
	// transaction and may have committed. This is a bug in fn (it must
	// return every error of tx and leave tx to the store), and the call is
	// NOT safe to retry blindly: check what fn wrote first. The error it
	// wraps says which case it was, where the store can tell.
	//
	// What each store detects, and what becomes of the key:
	//   - every database/sql store: fn's tx.Commit or tx.Rollback (and an
	//     ORM's, on the key's transaction);
	//   - Postgres (lib/pq, pgx stdlib): also an Exec of COMMIT or ROLLBACK
	//     (the save checks a mark the claim left in its transaction). No
	//     key is stored, so a retry runs fn again;
	//   - MariaDB, TiDB and SQLite: also an Exec of COMMIT or ROLLBACK, and a
	//     rollback by the database. When fn's commit committed the claimed
	//     key row, the call fills it with fn's value: a retry replays it. A
	//     claim that committed without a value (fn committed, then failed)
	//     answers later calls with this error until it expires;
	//   - MySQL 8: as MariaDB, but an Exec of COMMIT is not seen (it
	//     cannot say whether a transaction is open): the key is saved
	//     after it, on its own, and the call succeeds;
	//   - the pgx store: fn's tx.Commit and tx.Rollback are refused with an
	//     error; an Exec of COMMIT or ROLLBACK is seen (the connection's
	//     transaction status). No key is stored.
	// InTx reports it where the store can tell: fn's tx.Commit or
	// tx.Rollback on every database/sql store (the pgx store refuses them
	// with an error, which InTx returns), and an Exec of COMMIT on SQLite,
	// lib/pq and the pgx store.
	ErrTransactionEnded = errors.New("idempotency: the transaction ended before the key was saved (fn committed or rolled it back itself, or ignored an error after which the database ended it); what fn wrote may have committed without the key, so do not retry blindly")

	// ErrBadParams: params cannot be encoded as JSON, or hold a string
	// that is not valid UTF-8 (which JSON would make equal to others), so
	// no fingerprint can be made. Nothing touched the database.
	ErrBadParams = errors.New("idempotency: params cannot be encoded as JSON")

	// ErrInvalidScope: the store's scope (Store.Scope) is longer than 255
	// bytes. It is the service's mistake, not its client's; for callers
	// written before it existed, it also matches ErrInvalidKey. Nothing
	// touched the database.
	ErrInvalidScope error = invalidScope{}
)

type invalidScope struct{}

func (invalidScope) Error() string { return "idempotency: invalid scope" }
func (invalidScope) Unwrap() error { return ErrInvalidKey }

// FinalError is a failure that is stored under its key like a value: fn's
// writes are rolled back, and every retry with the same key gets the same
// failure without calling fn. Return one from fn with Final.
//
// On the first call Err is fn's own error; on a replay it is an error with
// the same message. Match final failures by Code, which survives storage.
// Payload is stored with them, byte for byte, whatever the store's Codec:
// what a retry needs beside the message to answer as the first call did
// (the gRPC adapter keeps a status with its details in it).
type FinalError struct {
	Code    string // optional, machine-readable: "card_declined"
	Err     error
	Payload []byte // optional, stored and replayed as it is
}

// Final marks err as final: see FinalError. Final(nil) is nil.
func Final(err error) error {
	if err == nil {
		return nil
	}
	return &FinalError{Err: err}
}

// FinalCode is Final with a machine-readable code ("card_declined"), which
// retries can match on after the failure was stored. FinalCode(code, nil)
// is nil.
func FinalCode(code string, err error) error {
	if err == nil {
		return nil
	}
	return &FinalError{Code: code, Err: err}
}

func (e *FinalError) Error() string {
	if e.Err == nil {
		return "idempotency: final failure " + e.Code
	}
	return e.Err.Error()
}

// Unwrap returns the failure.
func (e *FinalError) Unwrap() error { return e.Err }

// storedFailure is how a FinalError is stored.
type storedFailure struct {
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
	Payload []byte `json:"payload,omitempty"`
}

func (e *FinalError) encode() ([]byte, error) {
	msg := ""
	if e.Err != nil {
		msg = e.Err.Error()
	}
	return json.Marshal(storedFailure{Code: e.Code, Message: msg, Payload: e.Payload})
}

func decodeFailure(b []byte) error {
	var f storedFailure
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("idempotency: stored failure cannot be decoded: %w", err)
	}
	return &FinalError{Code: f.Code, Err: errors.New(f.Message), Payload: f.Payload}
}
