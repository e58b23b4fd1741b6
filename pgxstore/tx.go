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
// therefore checks ended first: a tx that fn kept past its call gets
// pgx.ErrTxClosed instead of running in another caller's transaction.
// (LargeObjects and Conn only hand out pgx's own objects, unchecked.)
type callTx struct {
	tx    pgx.Tx
	conn  *pgxpool.Conn
	ended atomic.Bool
	// stale is set by the claim when an expired row may hold the key.
	stale bool
}

var _ pgx.Tx = (*callTx)(nil)

// end marks t ended and reports whether this call did it, so that exactly
// one caller goes on to end the transaction and release the connection.
func (t *callTx) end() bool { return t.ended.CompareAndSwap(false, true) }

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

// Begin starts a nested transaction (a savepoint) in the call's transaction.
func (t *callTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if t.ended.Load() {
		return nil, pgx.ErrTxClosed
	}
	return t.tx.Begin(ctx)
}

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

// CopyFrom runs COPY FROM in the call's transaction.
func (t *callTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if t.ended.Load() {
		return 0, pgx.ErrTxClosed
	}
	return t.tx.CopyFrom(ctx, table, columns, src)
}

// SendBatch sends b in the call's transaction.
func (t *callTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if t.ended.Load() {
		return pgx.FailedBatchResults(b, pgx.ErrTxClosed)
	}
	return t.tx.SendBatch(ctx, b)
}

// LargeObjects returns the large objects of the call's transaction. pgx
// binds them to its own transaction (the type has no exported fields), so
// they are not guarded once the call has ended; neither is Conn.
func (t *callTx) LargeObjects() pgx.LargeObjects { return t.tx.LargeObjects() }

// Prepare prepares a statement on the call's connection.
func (t *callTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if t.ended.Load() {
		return nil, pgx.ErrTxClosed
	}
	return t.tx.Prepare(ctx, name, sql)
}

// Exec runs sql in the call's transaction.
func (t *callTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.ended.Load() {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return t.tx.Exec(ctx, sql, args...)
}

// Query runs sql in the call's transaction.
func (t *callTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.ended.Load() {
		// Rows that carry the error, as pgx's own closed transaction
		// returns, so that a deferred rows.Close() is safe.
		return pgx.FailedBatchResults(&pgx.Batch{}, pgx.ErrTxClosed).Query()
	}
	return t.tx.Query(ctx, sql, args...)
}

// QueryRow runs sql in the call's transaction.
func (t *callTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.ended.Load() {
		return pgx.FailedBatchResults(&pgx.Batch{}, pgx.ErrTxClosed).QueryRow()
	}
	return t.tx.QueryRow(ctx, sql, args...)
}

// Conn returns the connection the call's transaction runs on.
func (t *callTx) Conn() *pgx.Conn { return t.tx.Conn() }
