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

	// ErrTransactionEnded: the database ended the call's transaction while
	// fn ran (MySQL and MariaDB roll a transaction back on a deadlock, SQLite
	// on a full disk), and fn went on without returning that error; or fn
	// ended it itself, with an Exec of ROLLBACK (on every store) or of
	// COMMIT (on the pgx store, which can tell). Nothing
	// was stored under the key, but statements fn made after that point ran
	// outside any transaction and may have committed on their own. This is
	// a bug in fn (it must return every error of tx), and the call is NOT
	// safe to retry blindly: check what fn wrote first.
	ErrTransactionEnded = errors.New("idempotency: the database ended the transaction while fn ran (fn ignored an error such as a deadlock); writes fn made after it may have committed outside the transaction, so do not retry blindly")

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
type FinalError struct {
	Code string // optional, machine-readable: "card_declined"
	Err  error
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
}

func (e *FinalError) encode() ([]byte, error) {
	msg := ""
	if e.Err != nil {
		msg = e.Err.Error()
	}
	return json.Marshal(storedFailure{Code: e.Code, Message: msg})
}

func decodeFailure(b []byte) error {
	var f storedFailure
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("idempotency: stored failure cannot be decoded: %w", err)
	}
	return &FinalError{Code: f.Code, Err: errors.New(f.Message)}
}
