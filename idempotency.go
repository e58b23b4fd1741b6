package idempotency

import (
	"errors"
	"fmt"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/dialects"
)

// TxStore runs idempotent calls whose work runs in transactions of type
// TTx, through one driver (dialects.Driver): *sqlx.Tx for the database/sql
// store New returns (Store), pgx.Tx for the pgx store (package pgxstore).
// It is safe for concurrent use, and many processes may share one database.
type TxStore[TTx any] struct {
	driver dialects.Driver[TTx]
	cfg    *config
	scope  string
	codec  Codec  // WithCodec's, for this store's calls; nil: cfg's
	reads  *reads // shared by the store's scopes
	// flowReads is reads for flows (flow.go).
	flowReads *reads
}

// Store is the store for database/sql through sqlx: its calls run fn with a
// *sqlx.Tx. New returns one.
type Store = TxStore[*sqlx.Tx]

// New returns a Store on db. The dialect comes from db.DriverName():
// "postgres", "pgx" and "pgx/v5" are PostgreSQL, "mysql" is MySQL or
// MariaDB, "sqlite" and "sqlite3" are SQLite (see dialects.Drivers);
// WithDialect, or dialects.Register for a driver name, covers others.
// The key table must exist: see the migrations package.
func New(db *sqlx.DB, opts ...Option) (*Store, error) {
	if db == nil {
		return nil, errors.New("idempotency: New(nil): want an open *sqlx.DB")
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	d := cfg.dialect
	if d == nil {
		if d, err = dialectFor(db.DriverName(), cfg.table); err != nil {
			return nil, err
		}
	}
	return newStore(dialects.SQL(db, d, cfg.driverConfig()), cfg), nil
}

// NewTxStore returns a store on the driver that open returns for the
// store's configuration. It is how a driver package builds its store, as
// pgxstore.New does; most users call New or pgxstore.New.
func NewTxStore[TTx any](open func(dialects.Config) (dialects.Driver[TTx], error), opts ...Option) (*TxStore[TTx], error) {
	if open == nil {
		return nil, errors.New("idempotency: NewTxStore(nil): want a function that opens a driver")
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if cfg.dialect != nil {
		return nil, errors.New("idempotency: WithDialect is for database/sql stores (New); this store's driver speaks its own dialect")
	}
	d, err := open(cfg.driverConfig())
	if err != nil {
		return nil, err
	}
	if d == nil {
		return nil, errors.New("idempotency: NewTxStore: the open function returned no driver")
	}
	return newStore(d, cfg), nil
}

// newStore returns a store on d. Its calls read first as WithReadFirst
// says, or else as the driver chooses.
func newStore[TTx any](d dialects.Driver[TTx], cfg *config) *TxStore[TTx] {
	policy := dialects.ReadFirstNever
	r, chooses := d.(dialects.ReadFirster)
	switch {
	case cfg.readFirst != nil && *cfg.readFirst:
		policy = dialects.ReadFirstAlways
	case cfg.readFirst == nil && chooses:
		policy = r.ReadFirst()
	}
	// Flows read first adaptively unless WithReadFirst says otherwise: a
	// read costs a fresh flow little beside its steps, and spares a
	// replay the flow's start.
	flowPolicy := dialects.ReadFirstAdaptive
	if cfg.readFirst != nil {
		flowPolicy = policy
	}
	return &TxStore[TTx]{driver: d, cfg: cfg, reads: &reads{policy: policy}, flowReads: &reads{policy: flowPolicy}}
}

func (c *config) driverConfig() dialects.Config {
	return dialects.Config{Table: c.table, Isolation: c.isolation}
}

// Scope returns a store that shares s's database and options but keeps its
// keys apart under scope: the same key in two scopes names two calls. Use
// the tenant, account or user the call acts for. A scope is at most 255
// bytes; Do reports a longer one as ErrInvalidScope. The empty scope is the
// store's own: a store that is never scoped keeps every key in it.
func (s *TxStore[TTx]) Scope(scope string) *TxStore[TTx] {
	c := *s
	c.scope = scope
	return &c
}

// key checks key and the store's scope and derives the driver's key.
func (s *TxStore[TTx]) key(key string) (dialects.Key, error) {
	if err := ValidateKey(key); err != nil {
		return dialects.Key{}, err
	}
	if len(s.scope) > MaxKeyLen {
		return dialects.Key{}, fmt.Errorf("%w: the scope is %d bytes, longer than %d", ErrInvalidScope, len(s.scope), MaxKeyLen)
	}
	return dialects.Key{Scope: s.scope, Key: key, Lock: lockID(s.cfg.table, s.scope, key)}, nil
}
