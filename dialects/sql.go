package dialects

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"
)

// SQL returns the driver for a database/sql database: transactions are
// *sqlx.Tx, and d says how to speak to the database. Every statement is its
// own round trip, as database/sql sends them.
func SQL(db *sqlx.DB, d Dialect, cfg Config) Driver[*sqlx.Tx] {
	var opts *sql.TxOptions
	if cfg.Isolation != sql.LevelDefault {
		opts = &sql.TxOptions{Isolation: cfg.Isolation}
	}
	return &sqlDriver{db: db, d: d, opts: opts, stmts: newStatements(d), flow: flowStatements(d)}
}

type sqlDriver struct {
	db    *sqlx.DB
	d     Dialect
	opts  *sql.TxOptions
	stmts *statements     // nil: the dialect prepares none (see Prepared)
	flow  *FlowStatements // nil: the dialect runs no flows (see FlowDialect)
}

// in is what the dialect's statements run on in tx: the prepared ones, once
// they are ready.
func (s *sqlDriver) in(tx *sqlx.Tx) Querier {
	if m := s.stmts.get(); m != nil {
		return prepared{Querier: tx, stmts: m, tx: tx}
	}
	return tx
}

// outside is in outside any transaction.
func (s *sqlDriver) outside() Querier {
	if m := s.stmts.get(); m != nil {
		return prepared{Querier: s.db, stmts: m}
	}
	return s.db
}

var _ Driver[*sqlx.Tx] = (*sqlDriver)(nil)

func (s *sqlDriver) Name() string { return s.d.Name() }

// ReadFirst returns the dialect's choice, if it makes one.
func (s *sqlDriver) ReadFirst() ReadFirst {
	if r, ok := s.d.(ReadFirster); ok {
		return r.ReadFirst()
	}
	return ReadFirstNever
}

// begin obeys ctx while it waits for a pooled connection and for BEGIN
// (where SQLite waits for its write lock). Once the transaction has begun,
// its fate is decided by its caller, not by ctx: database/sql rolls back a
// transaction whose context ends, even during COMMIT. The statements in it
// still get ctx.
func (s *sqlDriver) begin(ctx context.Context) (*sqlx.Tx, error) {
	txCtx, end := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, end)
	tx, err := s.db.BeginTxx(txCtx, s.opts)
	if !stop() {
		// ctx ended before BEGIN was done: end went to the transaction
		// too, and database/sql rolls it back.
		if err == nil {
			_ = tx.Rollback()
		}
		return nil, ctx.Err()
	}
	if err != nil {
		end()
		return nil, fmt.Errorf("begin a transaction: %w", err)
	}
	// end is not called again: nothing is registered with txCtx's parent,
	// and database/sql cancels its own child of txCtx when tx ends.
	return tx, nil
}

func (s *sqlDriver) Begin(ctx context.Context, k Key, fingerprint []byte, ttl time.Duration) (*sqlx.Tx, Claim, Record, error) {
	var none Record
	s.stmts.prepare(ctx, s.db)
	tx, err := s.begin(ctx)
	if err != nil {
		return nil, 0, none, err
	}
	if st, ok := s.d.(TxStarter); ok {
		if err := st.StartTx(ctx, s.in(tx)); err != nil {
			_ = tx.Rollback()
			return nil, 0, none, fmt.Errorf("start the transaction: %w", err)
		}
	}
	c, rec, err := s.d.Claim(ctx, s.in(tx), k, fingerprint, ttl)
	if err != nil || c != Claimed {
		// Nothing but ROLLBACK after a failed claim: see the mysql dialect.
		_ = tx.Rollback()
		if err != nil {
			err = fmt.Errorf("claim the key: %w", err)
		}
		return nil, c, rec, err
	}
	return tx, Claimed, none, nil
}

func (s *sqlDriver) Commit(ctx context.Context, tx *sqlx.Tx, k Key, rec Record, ttl time.Duration) error {
	ok, err := s.d.Save(ctx, s.in(tx), k, rec, ttl)
	if err != nil || !ok {
		_ = tx.Rollback()
		switch {
		case errors.Is(err, sql.ErrTxDone):
			// fn called tx.Commit or tx.Rollback (an ORM's Commit on the
			// key's transaction): database/sql sent nothing.
			return s.settle(ctx, k, rec, ttl)
		case err == nil:
			return ErrConflict
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		if s.Classify(err) == Ended {
			// fn sent its own COMMIT or ROLLBACK, and the save ran on its
			// own after it (SQLite's COMMIT then finds no transaction):
			// the key is saved only if fn committed.
			return fmt.Errorf("%w: %w", EndedError(true), err)
		}
		return &CommitError{Err: err}
	}
	return nil
}

// settle is Commit's answer when fn ended tx through database/sql: a
// claimed row that committed with fn's commit is filled with rec, so that
// retries replay it rather than find a claim nobody will finish.
func (s *sqlDriver) settle(ctx context.Context, k Key, rec Record, ttl time.Duration) error {
	st, ok := s.d.(Settler)
	if !ok {
		return fmt.Errorf("%w: fn committed or rolled it back itself (tx.Commit or tx.Rollback); nothing marks the key, so a retry runs fn again, and whatever fn wrote before a commit stayed", ErrTransactionEnded)
	}
	settled, err := st.Settle(context.WithoutCancel(ctx), s.outside(), k, rec, ttl)
	if err != nil {
		return fmt.Errorf("%w: fn committed or rolled it back itself (tx.Commit or tx.Rollback), and the claimed key could not be settled: %w", ErrTransactionEnded, err)
	}
	return EndedError(settled)
}

func (s *sqlDriver) Rollback(tx *sqlx.Tx) { _ = tx.Rollback() }

func (s *sqlDriver) BeginPlain(ctx context.Context) (*sqlx.Tx, error) { return s.begin(ctx) }

func (s *sqlDriver) CommitPlain(tx *sqlx.Tx) error {
	err := tx.Commit()
	if err != nil && s.Classify(err) == Ended {
		return fmt.Errorf("%w: fn committed or rolled it back itself: %w", ErrTransactionEnded, err)
	}
	return err
}

// Savepoint names are the engine's own (idempotency_N), safe to splice in.
func (s *sqlDriver) Savepoint(ctx context.Context, tx *sqlx.Tx, name string) error {
	_, err := tx.ExecContext(context.WithoutCancel(ctx), "SAVEPOINT "+name)
	return err
}

func (s *sqlDriver) RollbackTo(ctx context.Context, tx *sqlx.Tx, name string) error {
	ctx = context.WithoutCancel(ctx)
	_, err := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT "+name)
	if _, rerr := tx.ExecContext(ctx, "RELEASE SAVEPOINT "+name); err == nil {
		err = rerr
	}
	return err
}

func (s *sqlDriver) Release(ctx context.Context, tx *sqlx.Tx, name string) error {
	_, err := tx.ExecContext(context.WithoutCancel(ctx), "RELEASE SAVEPOINT "+name)
	return err
}

// Claim, Save and LookupTx run in the caller's transaction (DoTx), which
// holds a connection: they use the prepared statements if they are ready,
// and never prepare them.
func (s *sqlDriver) Claim(ctx context.Context, tx *sqlx.Tx, k Key, fingerprint []byte, ttl time.Duration) (Claim, Record, error) {
	return s.d.Claim(ctx, s.in(tx), k, fingerprint, ttl)
}

func (s *sqlDriver) Save(ctx context.Context, tx *sqlx.Tx, k Key, rec Record, ttl time.Duration) (bool, error) {
	return s.d.Save(ctx, s.in(tx), k, rec, ttl)
}

func (s *sqlDriver) Lookup(ctx context.Context, k Key) (Record, bool, error) {
	s.stmts.prepare(ctx, s.db)
	return s.d.Lookup(ctx, s.outside(), k)
}

func (s *sqlDriver) LookupTx(ctx context.Context, tx *sqlx.Tx, k Key) (Record, bool, error) {
	rec, ok, err := s.d.Lookup(ctx, s.in(tx), k)
	if errors.Is(err, ErrTransactionEnded) {
		// A claimed row, unsaved: inside the caller's transaction it may
		// be an outer call's own claim of the key, not yet saved. Only a
		// read outside tells an abandoned claim.
		return Record{}, false, nil
	}
	return rec, ok, err
}

func (s *sqlDriver) DeleteExpired(ctx context.Context, k Key) error {
	return s.d.DeleteExpired(ctx, s.db, k)
}

func (s *sqlDriver) DeleteExpiredTx(ctx context.Context, tx *sqlx.Tx, k Key) error {
	return s.d.DeleteExpired(ctx, tx, k)
}

// OneWriter returns the dialect's answer (see OneWriter).
func (s *sqlDriver) OneWriter() bool {
	o, ok := s.d.(OneWriter)
	return ok && o.OneWriter()
}

func (s *sqlDriver) Prune(ctx context.Context, limit int) (int64, error) {
	return s.d.Prune(ctx, s.db, limit)
}

func (s *sqlDriver) Classify(err error) Class {
	if errors.Is(err, sql.ErrTxDone) {
		// database/sql's own: the transaction had already ended (fn
		// committed or rolled it back); nothing was sent.
		return Ended
	}
	return s.d.Classify(err)
}
