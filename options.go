package idempotency

import (
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/exactlyonce/idempotency/dialects"
)

type config struct {
	ttl        time.Duration
	wait       time.Duration
	maxRetries int
	pruneBatch int
	isolation  sql.IsolationLevel
	table      string
	dialect    dialects.Dialect
	logger     *slog.Logger
	hooks      Hooks
	readFirst  *bool       // nil: the driver's default
	codec      Codec       // nil: JSON
	prune      pruneConfig // RunPruner's
	flow       flowConfig  // flows' (flow.go)
}

// Option configures a Store.
type Option func(*config) error

// WithTTL sets how long a key is kept after its call committed: within it,
// retries replay; after it, the key is treated as absent (by the database's
// clock) and Prune deletes it. The TTL counts from the statement that saves
// the key, just before COMMIT, so a slow fn does not shorten it. On MySQL,
// MariaDB and TiDB a key may live up to an eighth of the TTL longer, a second at
// most: the save keeps the expiry the claim wrote when fn took less than
// that, so that it changes the row in place. The default is 24 hours.
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
			c.isolation = level
			return nil
		}
		return fmt.Errorf("idempotency: WithIsolation(%v): use READ COMMITTED or stronger; weaker levels could replay uncommitted results", level)
	}
}

// WithReadFirst(true) makes every call read its key before it begins a
// transaction; WithReadFirst(false) makes every call claim it first. A
// replay that reads first costs one indexed read and no transaction (on
// MySQL and SQLite a claim that finds the key costs a failed INSERT in a
// transaction, and a read after it; on SQLite, the write lock too); a
// fresh call that reads first costs one more statement.
//
// By default the dialect chooses, from what each costs on its database.
// Postgres claims first: its claim returns the stored record. MySQL,
// MariaDB and SQLite read first while more than a quarter of the store's
// recent calls replayed (a wave of retries, a duplicate storm), and claim
// first otherwise, so that fresh calls in ordinary traffic pay for no read.
func WithReadFirst(on bool) Option {
	return func(c *config) error {
		c.readFirst = &on
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
// for database/sql drivers registered under names New does not know. The
// dialect is built for its key table (postgres.New(table)), so it does not
// go with WithTable.
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

// newConfig applies opts to the defaults.
func newConfig(opts []Option) (*config, error) {
	cfg := &config{
		ttl:        24 * time.Hour,
		wait:       10 * time.Second,
		maxRetries: 10,
		pruneBatch: 5000,
		table:      dialects.DefaultTable,
		logger:     slog.New(slog.DiscardHandler),
		prune:      pruneConfig{interval: 5 * time.Minute, jitter: 0.2, pause: 50 * time.Millisecond},
	}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.dialect != nil && cfg.table != dialects.DefaultTable {
		return nil, fmt.Errorf("idempotency: WithDialect and WithTable(%q) together: the dialect has its own table; build it for that one (as postgres.New(%q) does) and leave WithTable out", cfg.table, cfg.table)
	}
	return cfg, nil
}
