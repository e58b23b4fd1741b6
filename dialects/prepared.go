package dialects

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"

	"github.com/jmoiron/sqlx"
)

// Prepared is implemented by dialects whose statements are worth preparing
// once per connection and running again, for drivers that otherwise parse
// each statement every time it runs: SQLite, where parsing a statement
// costs about as much as running it. The database/sql driver (SQL)
// prepares them on the first call that holds no connection, keeps them for
// the store's life (database/sql prepares each on a connection as it is
// first used there, and closes it with the connection), and sends every
// other statement as before.
type Prepared interface {
	// Statements lists the statements to keep prepared, as the dialect
	// sends them.
	Statements() []string
}

// statements holds a dialect's prepared statements, once they are.
type statements struct {
	queries []string
	ready   atomic.Pointer[map[string]*sqlx.Stmt]
	mu      sync.Mutex // held while preparing
}

func newStatements(d Dialect) *statements {
	p, ok := d.(Prepared)
	if !ok {
		return nil
	}
	return &statements{queries: p.Statements()}
}

// prepare prepares the statements, unless they are ready or being prepared.
// It needs a connection of db's pool: call it only where the caller holds
// none (a connection held while waiting for another can exhaust a small
// pool). When preparing fails (the table does not exist yet, ctx ended),
// the statements are sent unprepared and a later call tries again.
func (c *statements) prepare(ctx context.Context, db *sqlx.DB) {
	if c == nil || c.ready.Load() != nil || !c.mu.TryLock() {
		return
	}
	defer c.mu.Unlock()
	if c.ready.Load() != nil {
		return
	}
	m := make(map[string]*sqlx.Stmt, len(c.queries))
	for _, q := range c.queries {
		st, err := db.PreparexContext(ctx, q)
		if err != nil {
			for _, st := range m {
				_ = st.Close()
			}
			return
		}
		m[q] = st
	}
	c.ready.Store(&m)
}

// get returns the prepared statements, or nil.
func (c *statements) get() map[string]*sqlx.Stmt {
	if c == nil {
		return nil
	}
	if m := c.ready.Load(); m != nil {
		return *m
	}
	return nil
}

// preparedTx runs the prepared statements in a transaction (database/sql
// reuses the one prepared on its connection), and every other statement as
// the transaction would.
type preparedTx struct {
	*sqlx.Tx
	stmts map[string]*sqlx.Stmt
}

func (p preparedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := p.stmts[query]; st != nil {
		return p.StmtxContext(ctx, st).ExecContext(ctx, args...)
	}
	return p.Tx.ExecContext(ctx, query, args...)
}

func (p preparedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := p.stmts[query]; st != nil {
		return p.StmtxContext(ctx, st).QueryContext(ctx, args...)
	}
	return p.Tx.QueryContext(ctx, query, args...)
}

func (p preparedTx) QueryxContext(ctx context.Context, query string, args ...any) (*sqlx.Rows, error) {
	if st := p.stmts[query]; st != nil {
		return p.StmtxContext(ctx, st).QueryxContext(ctx, args...)
	}
	return p.Tx.QueryxContext(ctx, query, args...)
}

func (p preparedTx) QueryRowxContext(ctx context.Context, query string, args ...any) *sqlx.Row {
	if st := p.stmts[query]; st != nil {
		return p.StmtxContext(ctx, st).QueryRowxContext(ctx, args...)
	}
	return p.Tx.QueryRowxContext(ctx, query, args...)
}

// preparedDB is preparedTx outside any transaction.
type preparedDB struct {
	*sqlx.DB
	stmts map[string]*sqlx.Stmt
}

func (p preparedDB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := p.stmts[query]; st != nil {
		return st.ExecContext(ctx, args...)
	}
	return p.DB.ExecContext(ctx, query, args...)
}

func (p preparedDB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := p.stmts[query]; st != nil {
		return st.QueryContext(ctx, args...)
	}
	return p.DB.QueryContext(ctx, query, args...)
}

func (p preparedDB) QueryxContext(ctx context.Context, query string, args ...any) (*sqlx.Rows, error) {
	if st := p.stmts[query]; st != nil {
		return st.QueryxContext(ctx, args...)
	}
	return p.DB.QueryxContext(ctx, query, args...)
}

func (p preparedDB) QueryRowxContext(ctx context.Context, query string, args ...any) *sqlx.Row {
	if st := p.stmts[query]; st != nil {
		return st.QueryRowxContext(ctx, args...)
	}
	return p.DB.QueryRowxContext(ctx, query, args...)
}

var (
	_ Querier = preparedTx{}
	_ Querier = preparedDB{}
)
