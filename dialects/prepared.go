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

// prepared runs the prepared statements in tx, or on the pool when tx is
// nil, and every other statement as the Querier (tx or the pool) would.
type prepared struct {
	Querier
	stmts map[string]*sqlx.Stmt
	tx    *sqlx.Tx
}

// bind returns st for tx (database/sql reuses the statement prepared on
// tx's connection), or st itself outside a transaction.
func (p prepared) bind(ctx context.Context, st *sqlx.Stmt) *sqlx.Stmt {
	if p.tx != nil {
		return p.tx.StmtxContext(ctx, st)
	}
	return st
}

func (p prepared) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := p.stmts[query]; st != nil {
		return p.bind(ctx, st).ExecContext(ctx, args...)
	}
	return p.Querier.ExecContext(ctx, query, args...)
}

func (p prepared) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := p.stmts[query]; st != nil {
		return p.bind(ctx, st).QueryContext(ctx, args...)
	}
	return p.Querier.QueryContext(ctx, query, args...)
}

func (p prepared) QueryxContext(ctx context.Context, query string, args ...any) (*sqlx.Rows, error) {
	if st := p.stmts[query]; st != nil {
		return p.bind(ctx, st).QueryxContext(ctx, args...)
	}
	return p.Querier.QueryxContext(ctx, query, args...)
}

func (p prepared) QueryRowxContext(ctx context.Context, query string, args ...any) *sqlx.Row {
	if st := p.stmts[query]; st != nil {
		return p.bind(ctx, st).QueryRowxContext(ctx, args...)
	}
	return p.Querier.QueryRowxContext(ctx, query, args...)
}

var _ Querier = prepared{}
