package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// client is how one backend runs the workloads: database/sql through sqlx,
// or native pgx through the pgx store. Both count against a bare
// transaction of their own client API.
type client interface {
	// bare commits the business row alone: BEGIN, INSERT, COMMIT.
	bare(ctx context.Context, key string) error
	// floor commits the business row and one INSERT of the key with its
	// value: the least any protocol that stores the key can cost. With
	// empty, a statement that does nothing goes first.
	floor(ctx context.Context, empty bool, key string, fp, value []byte) error
	// run calls idempotency.Run for key; fn inserts the business row and
	// then works for work. readFirst picks the WithReadFirst store.
	run(ctx context.Context, readFirst bool, key string, work time.Duration, fnRuns *atomic.Int64) (idempotency.Result[receipt], error)
	// byHand is what a flow of two steps and a call does, written by
	// hand: a bare transaction, the call, another bare transaction.
	byHand(ctx context.Context, key string) error
	// flow runs that flow for key: a step that inserts a business row,
	// the call, a step that inserts another.
	flow(ctx context.Context, key string) (idempotency.Result[receipt], error)
	// conns sets the pool to c connections.
	conns(c int)
	// rows counts the business rows of key.
	rows(ctx context.Context, key string) (int, error)
	close()
}

// open connects to dsn with b's client API and builds its stores with opts.
func open(b *backend, dsn string, opts ...idempotency.Option) (client, error) {
	if b.native {
		return openPgx(b, dsn, opts)
	}
	return openSQL(b, dsn, opts)
}

// calls runs the workloads on one client API's transactions, TTx: the
// bare and floor transactions by hand, and the stores' calls.
type calls[TTx any] struct {
	b                *backend
	store, readFirst *idempotency.TxStore[TTx]
	begin            func(ctx context.Context) (TTx, error)
	exec             func(ctx context.Context, tx TTx, query string, args ...any) error
	commit           func(ctx context.Context, tx TTx) error
	rollback         func(ctx context.Context, tx TTx)
	flows            *idempotency.Flow[string, receipt, TTx]
}

// call is the flow workloads' call to another system: it does nothing, so
// that what is measured is what a flow adds to the same work by hand.
func call(_ context.Context, key string) (receipt, error) {
	return receipt{Ref: key, Amount: params.Amount}, nil
}

func (c *calls[TTx]) byHand(ctx context.Context, key string) error {
	if err := c.bare(ctx, key+"/a"); err != nil {
		return err
	}
	if _, err := call(ctx, key); err != nil {
		return err
	}
	return c.bare(ctx, key+"/b")
}

func (c *calls[TTx]) flow(ctx context.Context, key string) (idempotency.Result[receipt], error) {
	if c.flows == nil {
		c.flows = idempotency.NewFlow("bench", func(ctx context.Context, s *idempotency.Steps[TTx], key string) (receipt, error) {
			write := func(ref string) func(ctx context.Context, tx TTx) (bool, error) {
				return func(ctx context.Context, tx TTx) (bool, error) {
					return true, c.exec(ctx, tx, c.b.business, ref, params.Amount)
				}
			}
			if _, err := idempotency.Step(s, "a", write(key+"/a")); err != nil {
				return receipt{}, err
			}
			r, err := idempotency.Call(s, "call", call)
			if err != nil {
				return receipt{}, err
			}
			_, err = idempotency.Step(s, "b", write(key+"/b"))
			return r, err
		})
	}
	return c.flows.Run(ctx, c.store, key, key)
}

// inTx runs statements in a transaction of the client's own and commits.
func (c *calls[TTx]) inTx(ctx context.Context, statements func(tx TTx) error) error {
	tx, err := c.begin(ctx)
	if err != nil {
		return err
	}
	defer c.rollback(ctx, tx)
	if err := statements(tx); err != nil {
		return err
	}
	return c.commit(ctx, tx)
}

func (c *calls[TTx]) bare(ctx context.Context, key string) error {
	return c.inTx(ctx, func(tx TTx) error { return c.exec(ctx, tx, c.b.business, key, params.Amount) })
}

func (c *calls[TTx]) floor(ctx context.Context, empty bool, key string, fp, value []byte) error {
	return c.inTx(ctx, func(tx TTx) error {
		if empty {
			if err := c.exec(ctx, tx, c.b.emptyTrip); err != nil {
				return err
			}
		}
		if err := c.exec(ctx, tx, c.b.business, key, params.Amount); err != nil {
			return err
		}
		return c.exec(ctx, tx, c.b.keyRow, "", key, fp, value)
	})
}

func (c *calls[TTx]) run(ctx context.Context, readFirst bool, key string, work time.Duration, fnRuns *atomic.Int64) (idempotency.Result[receipt], error) {
	s := c.store
	if readFirst {
		s = c.readFirst
	}
	return idempotency.Run(ctx, s, key, params, func(ctx context.Context, tx TTx) (receipt, error) {
		if fnRuns != nil {
			fnRuns.Add(1)
		}
		if err := c.exec(ctx, tx, c.b.business, key, params.Amount); err != nil {
			return receipt{}, err
		}
		time.Sleep(work)
		return receipt{Ref: key, Amount: params.Amount}, nil
	})
}

// sqlClient runs on database/sql through sqlx.
type sqlClient struct {
	calls[*sqlx.Tx]
	db *sqlx.DB
}

func openSQL(b *backend, dsn string, opts []idempotency.Option) (*sqlClient, error) {
	db, err := sqlx.Open(b.driver, dsn)
	if err != nil {
		return nil, err
	}
	s, err := idempotency.New(db, opts...)
	if err != nil {
		return nil, err
	}
	rf, err := idempotency.New(db, append(opts, idempotency.WithReadFirst(true))...)
	if err != nil {
		return nil, err
	}
	return &sqlClient{db: db, calls: calls[*sqlx.Tx]{
		b: b, store: s, readFirst: rf,
		begin: func(ctx context.Context) (*sqlx.Tx, error) { return db.BeginTxx(ctx, nil) },
		exec: func(ctx context.Context, tx *sqlx.Tx, query string, args ...any) error {
			_, err := tx.ExecContext(ctx, query, args...)
			return err
		},
		commit:   func(_ context.Context, tx *sqlx.Tx) error { return tx.Commit() },
		rollback: func(_ context.Context, tx *sqlx.Tx) { _ = tx.Rollback() },
	}}, nil
}

func (c *sqlClient) conns(n int) {
	c.db.SetMaxOpenConns(n)
	c.db.SetMaxIdleConns(n)
}

func (c *sqlClient) rows(ctx context.Context, key string) (int, error) {
	var n int
	err := c.db.GetContext(ctx, &n, c.b.countRows, key)
	return n, err
}

func (c *sqlClient) close() { _ = c.db.Close() }

// pgxClient runs on a pgxpool.Pool. Its bare transaction is pgx's own:
// pool.Begin, Exec, Commit, three round trips.
type pgxClient struct {
	calls[pgx.Tx]
	dsn  string
	pool *pgxpool.Pool
	opts []idempotency.Option
}

func openPgx(b *backend, dsn string, opts []idempotency.Option) (*pgxClient, error) {
	c := &pgxClient{dsn: dsn, opts: opts}
	c.calls = calls[pgx.Tx]{
		b:     b,
		begin: func(ctx context.Context) (pgx.Tx, error) { return c.pool.Begin(ctx) },
		exec: func(ctx context.Context, tx pgx.Tx, query string, args ...any) error {
			_, err := tx.Exec(ctx, query, args...)
			return err
		},
		commit:   func(ctx context.Context, tx pgx.Tx) error { return tx.Commit(ctx) },
		rollback: func(ctx context.Context, tx pgx.Tx) { _ = tx.Rollback(ctx) },
	}
	return c, c.connect(4)
}

// connect opens a pool of n connections: pgxpool sizes its pool when it is
// made, so conns makes a new one.
func (c *pgxClient) connect(n int) error {
	cfg, err := pgxpool.ParseConfig(c.dsn)
	if err != nil {
		return err
	}
	cfg.MaxConns, cfg.MinConns = int32(n), 0
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	s, err := pgxstore.New(pool, c.opts...)
	if err != nil {
		pool.Close()
		return err
	}
	rf, err := pgxstore.New(pool, append(c.opts, idempotency.WithReadFirst(true))...)
	if err != nil {
		pool.Close()
		return err
	}
	if c.pool != nil {
		c.pool.Close()
	}
	c.pool, c.store, c.readFirst = pool, s, rf
	return nil
}

func (c *pgxClient) conns(n int) {
	if c.pool.Config().MaxConns == int32(n) {
		return
	}
	if err := c.connect(n); err != nil {
		panic(fmt.Sprintf("%s: reopen the pool with %d connections: %v", c.b.name, n, err))
	}
}

func (c *pgxClient) rows(ctx context.Context, key string) (int, error) {
	var n int
	err := c.pool.QueryRow(ctx, c.b.countRows, key).Scan(&n)
	return n, err
}

func (c *pgxClient) close() { c.pool.Close() }
