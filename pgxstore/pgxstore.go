package pgxstore

import (
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects"
)

// Store is the pgx store: idempotency.Do, Run, DoTx and RunTx accept it,
// with fn func(ctx context.Context, tx pgx.Tx) (T, error). Scope, Prune and
// RunPruner work as on the database/sql store.
type Store = idempotency.TxStore[pgx.Tx]

// New returns a Store on pool. It takes the root package's options
// (WithTTL, WithWait, WithIsolation, WithTable, ...), except WithDialect,
// which is for database/sql. The key table must exist: see Up.
//
// The store borrows pool's connections one call at a time and never closes
// pool.
func New(pool *pgxpool.Pool, opts ...idempotency.Option) (*Store, error) {
	if pool == nil {
		return nil, errors.New("pgxstore: New(nil): want an open *pgxpool.Pool")
	}
	return idempotency.NewTxStore(func(cfg dialects.Config) (dialects.Driver[pgx.Tx], error) {
		return newDriver(pool, cfg)
	}, opts...)
}
