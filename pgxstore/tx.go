package pgxstore

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// errOwned is what Commit and Rollback return when fn calls them: the store
// ends the call's transaction, because it must write the key in it first.
var errOwned = errors.New("pgxstore: fn must not commit or roll back the call's transaction; return an error to roll back")

// rollbackTimeout bounds a ROLLBACK. Past it the connection is closed
// instead, which rolls back just as well on the server; the bound only keeps
// a caller from waiting on a server that does not answer.
const rollbackTimeout = 5 * time.Second

// callTx is the pgx.Tx fn gets: the transaction begun on conn, with Commit
// and Rollback kept for the driver.
//
// The driver sends COMMIT inside its own pipeline, so pgx's transaction
// never learns that it ended and would go on sending statements on a
// connection that is back in the pool. Every method that runs a statement
// therefore checks ended first (guardedTx), and so do the savepoints fn
// begins on it: a tx that fn kept past its call gets pgx.ErrTxClosed
// instead of running in another caller's transaction, or in none.
// (LargeObjects and Conn only hand out pgx's own objects, unchecked.)
type callTx struct {
	guardedTx // tx, and ended pointing at endedFlag
	conn      *pgxpool.Conn
	endedFlag atomic.Bool
	// stale is set by the claim when an expired row may hold the key.
	stale bool
}

var _ pgx.Tx = (*callTx)(nil)

// newCallTx returns the call's transaction tx, begun on conn.
func newCallTx(tx pgx.Tx, conn *pgxpool.Conn) *callTx {
	t := &callTx{conn: conn}
	t.guardedTx = guardedTx{tx: tx, ended: &t.endedFlag}
	return t
}

// end marks t ended and reports whether this call did it, so that exactly
// one caller goes on to end the transaction and release the connection.
func (t *callTx) end() bool { return t.ended.CompareAndSwap(false, true) }

// Commit refuses: the store commits the call's transaction, with its key.
func (t *callTx) Commit(context.Context) error {
	if t.ended.Load() {
		return pgx.ErrTxClosed
	}
	return errOwned
}

// Rollback refuses: fn rolls back by returning an error.
func (t *callTx) Rollback(context.Context) error {
	if t.ended.Load() {
		return pgx.ErrTxClosed
	}
	return errOwned
}

// close rolls back what is still open on the server and gives the connection
// back to the pool. A connection whose state is unknown (the ROLLBACK
// failed, a result is still being read) is closed instead: pgxpool would
// destroy it too, but only after a look at a status that may be stale.
func (t *callTx) close() {
	c := t.conn.Conn()
	pc := c.PgConn()
	switch {
	case pc.IsClosed():
	case pc.IsBusy():
		destroy(t.conn)
		return
	case pc.TxStatus() != 'I':
		ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
		_, err := c.Exec(ctx, "rollback")
		cancel()
		if err != nil {
			destroy(t.conn)
			return
		}
	}
	t.conn.Release()
}

// destroy takes conn out of the pool and closes it.
func destroy(conn *pgxpool.Conn) {
	c := conn.Hijack()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// guardedTx is a pgx.Tx that stops once the call it belongs to has ended:
// the call's transaction, or a savepoint fn began in it.
type guardedTx struct {
	tx    pgx.Tx
	ended *atomic.Bool // the call's
}

var _ pgx.Tx = guardedTx{}

// Begin starts a nested transaction (a savepoint), guarded as t is.
func (t guardedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if t.ended.Load() {
		return nil, pgx.ErrTxClosed
	}
	sp, err := t.tx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return guardedTx{tx: sp, ended: t.ended}, nil
}

// Commit releases a savepoint (callTx overrides it).
func (t guardedTx) Commit(ctx context.Context) error {
	if t.ended.Load() {
		return pgx.ErrTxClosed
	}
	return t.tx.Commit(ctx)
}

// Rollback rolls back to a savepoint (callTx overrides it).
func (t guardedTx) Rollback(ctx context.Context) error {
	if t.ended.Load() {
		return pgx.ErrTxClosed
	}
	return t.tx.Rollback(ctx)
}

// CopyFrom runs COPY FROM in the transaction.
func (t guardedTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if t.ended.Load() {
		return 0, pgx.ErrTxClosed
	}
	return t.tx.CopyFrom(ctx, table, columns, src)
}

// SendBatch sends b in the transaction.
func (t guardedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if t.ended.Load() {
		return pgx.FailedBatchResults(b, pgx.ErrTxClosed)
	}
	return t.tx.SendBatch(ctx, b)
}

// LargeObjects returns the large objects of the transaction. pgx binds them
// to its own transaction (the type has no exported fields), so they are not
// guarded once the call has ended; neither is Conn.
func (t guardedTx) LargeObjects() pgx.LargeObjects { return t.tx.LargeObjects() }

// Prepare prepares a statement on the call's connection.
func (t guardedTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if t.ended.Load() {
		return nil, pgx.ErrTxClosed
	}
	return t.tx.Prepare(ctx, name, sql)
}

// Exec runs sql in the transaction.
func (t guardedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.ended.Load() {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return t.tx.Exec(ctx, sql, args...)
}

// Query runs sql in the transaction.
func (t guardedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.ended.Load() {
		// Rows that carry the error, as pgx's own closed transaction
		// returns, so that a deferred rows.Close() is safe.
		return pgx.FailedBatchResults(&pgx.Batch{}, pgx.ErrTxClosed).Query()
	}
	return t.tx.Query(ctx, sql, args...)
}

// QueryRow runs sql in the transaction.
func (t guardedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.ended.Load() {
		return pgx.FailedBatchResults(&pgx.Batch{}, pgx.ErrTxClosed).QueryRow()
	}
	return t.tx.QueryRow(ctx, sql, args...)
}

// Conn returns the connection the transaction runs on.
func (t guardedTx) Conn() *pgx.Conn { return t.tx.Conn() }
