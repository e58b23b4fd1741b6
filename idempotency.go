package idempotency

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/dialects"
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
	// on a full disk), and fn went on without returning that error. Nothing
	// was stored under the key, but statements fn made after that point ran
	// outside any transaction and may have committed on their own. This is
	// a bug in fn (it must return every error of tx), and the call is NOT
	// safe to retry blindly: check what fn wrote first.
	ErrTransactionEnded = errors.New("idempotency: the database ended the transaction while fn ran (fn ignored an error such as a deadlock); writes fn made after it may have committed outside the transaction, so do not retry blindly")

	// ErrInvalidScope: the store's scope (Store.Scope) is longer than 255
	// bytes. It is the service's mistake, not its client's; for callers
	// written before it existed, it also matches ErrInvalidKey. Nothing
	// touched the database.
	ErrInvalidScope error = invalidScope{}
)

type invalidScope struct{}

func (invalidScope) Error() string { return "idempotency: invalid scope" }
func (invalidScope) Unwrap() error { return ErrInvalidKey }

// MaxKeyLen is the longest key (and scope) in bytes.
const MaxKeyLen = 255

// Store runs idempotent calls against one database. It is safe for
// concurrent use, and many processes may share one database.
type Store struct {
	db      *sqlx.DB
	dialect dialects.Dialect
	cfg     *config
	scope   string
}

type config struct {
	ttl        time.Duration
	wait       time.Duration
	maxRetries int
	pruneBatch int
	txOptions  *sql.TxOptions
	table      string
	dialect    dialects.Dialect
	logger     *slog.Logger
	hooks      Hooks
	readFirst  bool
}

// Option configures a Store.
type Option func(*config) error

// WithTTL sets how long a key is kept after its call committed: within it,
// retries replay; after it, the key is treated as absent (by the database's
// clock) and Prune deletes it. The TTL counts from the statement that saves
// the key, just before COMMIT, so a slow fn does not shorten it. The
// default is 24 hours.
func WithTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Millisecond {
			return fmt.Errorf("idempotency: WithTTL(%v): the TTL must be at least 1ms", d)
		}
		c.ttl = d
		return nil
	}
}

// WithWait sets how long Do waits for a twin (a call with the same key that
// is still running) before it gives up with ErrInProgress. The default is 10
// seconds; 0 means do not wait.
//
// A waiting twin holds no transaction and no pooled connection while it
// waits: it tries to claim the key, finds it held, rolls back, pauses (1ms,
// doubling to 32ms, jittered) and tries again. It sees the holder's commit
// at most one pause late and then replays it; if the holder rolls back, one
// twin takes the key. Each try is one short transaction (BEGIN, claim,
// ROLLBACK), so a twin that waits a second costs about 40 of them and other
// calls keep the pool. Two databases wait inside a try: MySQL 8 (not
// MariaDB) cannot bound a row-lock wait below one second, so there a try
// holds its connection for up to a second; and on SQLite every writer,
// twin or not, waits for the one write lock in BEGIN, for the connection's
// busy_timeout, while the context of the call can still end the wait.
func WithWait(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("idempotency: WithWait(%v): the wait must not be negative", d)
		}
		c.wait = d
		return nil
	}
}

// WithMaxRetries sets how many times Do runs an attempt again after a
// serialization failure or a deadlock (the attempt was rolled back whole, so
// this is safe). The default is 10.
func WithMaxRetries(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("idempotency: WithMaxRetries(%d): must not be negative", n)
		}
		c.maxRetries = n
		return nil
	}
}

// WithIsolation sets the isolation level of the transactions Do begins. The
// default is the database's (READ COMMITTED on Postgres, REPEATABLE READ on
// MySQL and MariaDB, SERIALIZABLE on SQLite).
func WithIsolation(level sql.IsolationLevel) Option {
	return func(c *config) error {
		switch level {
		case sql.LevelDefault, sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelSerializable:
			c.txOptions = &sql.TxOptions{Isolation: level}
			return nil
		}
		return fmt.Errorf("idempotency: WithIsolation(%v): use READ COMMITTED or stronger; weaker levels could replay uncommitted results", level)
	}
}

// WithReadFirst makes Do read the key before it begins a transaction. A
// replay then costs one indexed read and no transaction (on MySQL and SQLite
// it otherwise costs a failed INSERT and, on SQLite, the write lock); a
// fresh call costs one more round trip. Worth it where retries are common,
// and on SQLite, whose statements are cheap. The default is off.
func WithReadFirst(on bool) Option {
	return func(c *config) error {
		c.readFirst = on
		return nil
	}
}

// WithTable names the key table when it is not idempotency_keys, for
// example "billing.idempotency_keys", with the same columns. The migrations
// create only the default, and on Postgres the idempotency_claim function
// that reads it; with another table the claim is one plain statement, whose
// read can miss a twin committing at that instant under READ COMMITTED (the
// INSERT then catches it, after fn ran in an attempt that rolls back).
func WithTable(name string) Option {
	return func(c *config) error {
		if !tableName.MatchString(name) {
			return fmt.Errorf("idempotency: WithTable(%q): want an identifier of letters, digits and underscores, optionally schema-qualified", name)
		}
		c.table = name
		return nil
	}
}

var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$`)

// WithDialect sets the dialect instead of deriving it from the driver name,
// for drivers registered under names New does not know.
func WithDialect(d dialects.Dialect) Option {
	return func(c *config) error {
		if d == nil {
			return errors.New("idempotency: WithDialect(nil): want a dialect")
		}
		c.dialect = d
		return nil
	}
}

// WithPruneBatch sets how many rows one batch of Prune deletes; the default
// is 5000. Smaller batches hold locks for less time.
func WithPruneBatch(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 1_000_000 {
			return fmt.Errorf("idempotency: WithPruneBatch(%d): want 1 to 1000000", n)
		}
		c.pruneBatch = n
		return nil
	}
}

// WithLogger makes the store log retries, waits and prunes. The default is
// silent.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("idempotency: WithLogger(nil): want a logger")
		}
		c.logger = l
		return nil
	}
}

// New returns a Store on db. The dialect comes from db.DriverName():
// "postgres", "pgx" and "pgx/v5" are PostgreSQL, "mysql" is MySQL or
// MariaDB, "sqlite" and "sqlite3" are SQLite; WithDialect covers others.
// The key table must exist: see the migrations package.
func New(db *sqlx.DB, opts ...Option) (*Store, error) {
	if db == nil {
		return nil, errors.New("idempotency: New(nil): want an open *sqlx.DB")
	}
	cfg := &config{
		ttl:        24 * time.Hour,
		wait:       10 * time.Second,
		maxRetries: 10,
		pruneBatch: 5000,
		table:      dialects.DefaultTable,
		logger:     slog.New(slog.DiscardHandler),
	}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(cfg); err != nil {
			return nil, err
		}
	}
	d := cfg.dialect
	if d == nil {
		var err error
		if d, err = dialectFor(db.DriverName(), cfg.table); err != nil {
			return nil, err
		}
	}
	return &Store{db: db, dialect: d, cfg: cfg}, nil
}

// Scope returns a store that shares s's database and options but keeps its
// keys apart under scope: the same key in two scopes names two calls. Use
// the tenant, account or user the call acts for. A scope is at most 255
// bytes; Do reports a longer one as ErrInvalidScope. The empty scope is the
// store's own: a store that is never scoped keeps every key in it.
func (s *Store) Scope(scope string) *Store {
	c := *s
	c.scope = scope
	return &c
}

// DB returns the database the store runs on.
func (s *Store) DB() *sqlx.DB { return s.db }

// TxOptions returns the options (WithIsolation) of the transactions the
// store begins, for code that begins its own alongside, such as the HTTP
// adapter for requests without a key. It may be nil.
func (s *Store) TxOptions() *sql.TxOptions { return s.cfg.txOptions }

// Dialect returns the store's dialect.
func (s *Store) Dialect() dialects.Dialect { return s.dialect }

// key checks key and the store's scope and derives the dialect's key.
func (s *Store) key(key string) (dialects.Key, error) {
	if err := ValidateKey(key); err != nil {
		return dialects.Key{}, err
	}
	if len(s.scope) > MaxKeyLen {
		return dialects.Key{}, fmt.Errorf("%w: the scope is %d bytes, longer than %d", ErrInvalidScope, len(s.scope), MaxKeyLen)
	}
	return dialects.Key{Scope: s.scope, Key: key, Lock: lockID(s.scope, key)}, nil
}

// lockID is FNV-1a (64 bits) of scope, a zero byte and key: stable across
// processes, so every instance locks the same number for a key. Written out
// rather than through hash/fnv, which allocates on every call of Do.
func lockID(scope, key string) int64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(scope); i++ {
		h = (h ^ uint64(scope[i])) * prime
	}
	h *= prime // the zero byte between them
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * prime
	}
	return int64(h)
}

// ValidateKey reports whether key is a valid idempotency key: 1 to 255
// bytes of printable ASCII (0x20 to 0x7E). The error wraps ErrInvalidKey.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: the key is empty", ErrInvalidKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: the key is %d bytes, longer than %d", ErrInvalidKey, len(key), MaxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("%w: byte %d is %#02x, not printable ASCII", ErrInvalidKey, i, c)
		}
	}
	return nil
}

// Fingerprint returns the SHA-256 of params' JSON encoding: the same value
// always gives the same fingerprint (map keys are sorted; a struct keeps its
// field order), so a retry with equal params matches the stored call.
//
// Strings must be valid UTF-8: JSON would turn every invalid byte into
// U+FFFD and make different params look the same, so they are refused.
// Pass binary data as []byte.
func Fingerprint(params any) ([]byte, error) {
	b, err := json.Marshal(params)
	if err != nil {
		return nil, badParams(err)
	}
	if replacedInvalidUTF8(b) {
		return nil, badParams(errors.New("a string is not valid UTF-8 (pass binary data as []byte)"))
	}
	sum := sha256.Sum256(b)
	return sum[:], nil
}

// replacedInvalidUTF8 reports whether encoding/json replaced an invalid
// byte: it writes the escape \ufffd only then (a valid U+FFFD is written as
// is), and an escape is one whose backslash is not itself escaped.
func replacedInvalidUTF8(b []byte) bool {
	const esc = `\ufffd`
	for i := bytes.Index(b, []byte(esc)); i >= 0; {
		n := 0
		for j := i; j >= 0 && b[j] == '\\'; j-- {
			n++
		}
		if n%2 == 1 {
			return true
		}
		next := bytes.Index(b[i+1:], []byte(esc))
		if next < 0 {
			return false
		}
		i += 1 + next
	}
	return false
}

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
