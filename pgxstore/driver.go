package pgxstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/dialects/postgres"
)

// driver is the key protocol on a pgxpool.Pool: dialects.Driver[pgx.Tx]. It
// sends the Postgres dialect's statements (postgres.SQL), so that a pgx
// store and a database/sql store work on one key table together.
//
// Its errors go to the engine, which says what failed ("idempotency: save
// the key: ..."); they name the step and wrap pgx's error.
type driver struct {
	pool *pgxpool.Pool
	sql  postgres.Statements
	opts pgx.TxOptions
	// twoStatements claims with Lock and Read rather than Claim: the
	// store runs at READ COMMITTED or the server's default level.
	twoStatements bool
	flows         dialects.FlowStatements // see flows.go
}

var _ dialects.Driver[pgx.Tx] = (*driver)(nil)

// newDriver returns the driver for pool (New checked it) with cfg's table
// and isolation (the store's options checked them).
func newDriver(pool *pgxpool.Pool, cfg dialects.Config) (*driver, error) {
	opts, err := txOptions(cfg.Isolation)
	if err != nil {
		return nil, err
	}
	two := opts.IsoLevel == "" || opts.IsoLevel == pgx.ReadCommitted
	return &driver{pool: pool, sql: postgres.SQL(cfg.Table), opts: opts, twoStatements: two, flows: postgres.FlowSQL(cfg.Table)}, nil
}

// txOptions maps database/sql's isolation levels onto pgx's.
func txOptions(level sql.IsolationLevel) (pgx.TxOptions, error) {
	var opts pgx.TxOptions
	switch level {
	case sql.LevelDefault:
		// The server's default_transaction_isolation.
	case sql.LevelReadCommitted:
		opts.IsoLevel = pgx.ReadCommitted
	case sql.LevelRepeatableRead:
		opts.IsoLevel = pgx.RepeatableRead
	case sql.LevelSerializable:
		opts.IsoLevel = pgx.Serializable
	default:
		return opts, fmt.Errorf("pgxstore: isolation level %v: use READ COMMITTED, REPEATABLE READ or SERIALIZABLE", level)
	}
	return opts, nil
}

// Name returns "postgres".
func (d *driver) Name() string { return "postgres" }

// Begin sends BEGIN and the claim as one pipeline, so a fresh call's first
// round trip already holds the key. Anything but Claimed costs a second
// round trip, the ROLLBACK, before the connection goes back to the pool.
//
// Unless the store asks for REPEATABLE READ or SERIALIZABLE, the claim is
// two plain statements, Lock and Read: at READ COMMITTED, Read's snapshot
// is taken after the lock, and the server has no function to run. Lock
// also says which level the transaction runs at; on a server whose default
// is stricter, a claim that took the lock and read no row is made again
// with Claim (a third round trip), whose probe sees a row committed since
// the snapshot.
//
// ctx governs the wait for a connection and the pipeline; pgx closes the
// connection when ctx ends mid-pipeline, which ends the transaction too.
// Once Begin has returned, ctx no longer matters to the transaction.
func (d *driver) Begin(ctx context.Context, k dialects.Key, _ []byte, _ time.Duration) (pgx.Tx, dialects.Claim, dialects.Record, error) {
	var none dialects.Record
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, 0, none, fmt.Errorf("acquire a connection: %w", err)
	}
	var c claimRow
	b := &pgx.Batch{}
	b.BeginTx(d.opts)
	if d.twoStatements {
		b.Queue(d.sql.Lock, k.Lock).QueryRow(c.scanLock)
		b.Queue(d.sql.Read, k.Scope, k.Key).QueryRow(c.scanRead)
	} else {
		b.Queue(d.sql.Claim, k.Lock, k.Scope, k.Key).QueryRow(c.scan)
	}
	br := conn.Conn().SendBatch(ctx, b)
	err = br.Close()
	t := newCallTx(br.Tx(), conn)
	if err == nil && d.twoStatements && !c.readCommitted && c.locked && c.rec.Fingerprint == nil && d.sql.ClaimProbes {
		c = claimRow{}
		err = c.scan(t.tx.QueryRow(ctx, d.sql.Claim, k.Lock, k.Scope, k.Key))
	}
	claim, rec := c.result()
	if err != nil || claim != dialects.Claimed {
		t.end()
		t.close()
		if err != nil {
			return nil, 0, none, fmt.Errorf("begin and claim the key: %w", err)
		}
		return nil, claim, rec, nil
	}
	t.stale = c.stale
	return t, dialects.Claimed, none, nil
}

// claimRow is what a claim read: Claim's row, or Lock's row and Read's
// (which may find none).
type claimRow struct {
	locked bool
	rec    dialects.Record
	failed *bool // NULL when there is no record

	readCommitted bool // from Lock
	// stale reports an expired row under the key, or one that may be
	// there: the save deletes it first. Claim does not say, so after Claim
	// it is assumed.
	stale bool
}

func (c *claimRow) scan(row pgx.Row) error {
	c.stale = true
	return row.Scan(&c.locked, &c.rec.Fingerprint, &c.rec.Value, &c.failed)
}

func (c *claimRow) scanLock(row pgx.Row) error {
	return row.Scan(&c.locked, &c.readCommitted)
}

func (c *claimRow) scanRead(row pgx.Row) error {
	var live bool
	err := row.Scan(&c.rec.Fingerprint, &c.rec.Value, &c.failed, &live)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return err
	case !live:
		c.rec, c.failed, c.stale = dialects.Record{}, nil, true
	}
	return nil
}

// result sorts what the claim read, as the database/sql dialect does.
func (c *claimRow) result() (dialects.Claim, dialects.Record) {
	rec := c.rec
	rec.Failed = c.failed != nil && *c.failed
	return postgres.ClaimOf(c.locked, rec)
}

// Commit sends the save and COMMIT as one pipeline: a plain INSERT of the
// record and COMMIT, with one Sync, preceded by a DELETE of the key's
// expired row when the claim saw one (or could not tell). Postgres
// skips every message after an error until the Sync, so when the INSERT
// fails (23505: a live row holds the key) or any statement before it does,
// the COMMIT never runs, whatever the client reads afterwards. The
// transaction is then aborted, and a ROLLBACK ends it.
//
// The pipeline runs under context.WithoutCancel(ctx): the engine checks ctx
// before it calls Commit, and a commit under way must not be cut short by
// the caller, which would leave its outcome unknown for no reason.
func (d *driver) Commit(ctx context.Context, tx pgx.Tx, k dialects.Key, rec dialects.Record, ttl time.Duration) error {
	t, err := ending(tx, "Commit")
	if err != nil {
		return err
	}
	defer t.close()
	if err := t.unfit(); err != nil {
		return err
	}

	b := &pgx.Batch{}
	if t.stale {
		b.Queue(d.sql.DeleteExpired, k.Scope, k.Key)
	}
	b.Queue(d.sql.Insert, k.Scope, k.Key, rec.Fingerprint, rec.Value, rec.Failed, ttl.Microseconds())
	b.Queue("commit")
	br := t.conn.Conn().SendBatch(context.WithoutCancel(ctx), b)
	committing := false
	var tag pgconn.CommandTag
	if t.stale {
		_, err = br.Exec() // DELETE
	}
	if err == nil {
		if _, err = br.Exec(); err == nil { // INSERT
			committing = true
			tag, err = br.Exec()
		}
	}
	// Read up to the Sync. An error here, after COMMIT's own answer came,
	// is a connection that broke afterwards: the commit stands, and the
	// pool will not take the connection back.
	_ = br.Close()

	switch {
	case err == nil && tag.String() != "COMMIT":
		// The server turned COMMIT into ROLLBACK: nothing committed.
		return &dialects.CommitError{Err: fmt.Errorf("commit answered %q: %w", tag.String(), pgx.ErrTxCommitRollback)}
	case err == nil:
		return nil
	case committing, !answered(err):
		// COMMIT itself failed, or the connection broke once the pipeline
		// was under way, so the COMMIT may have run. pgconn.SafeToRetry
		// cannot say otherwise: pgx reports a connection lost while reading
		// a batch's results (in QueryExecModeExec and the simple protocol)
		// as "conn closed", an error that claims nothing was sent.
		return &dialects.CommitError{Err: err}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" { // only the INSERT can
		return fmt.Errorf("%w: %w", dialects.ErrConflict, err)
	}
	return postgres.SaveError(err)
}

// answered reports whether err is the server's answer to a statement, so
// that the statement, and what came after it in the pipeline, did not take
// effect. Anything else (a broken connection, an error of pgx's own, a
// server shutting down) leaves the pipeline's outcome unknown.
func answered(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && postgres.Classify(err) != dialects.Lost
}

// Rollback ends tx without committing and gives its connection back. It
// does nothing on a transaction that has already ended.
func (d *driver) Rollback(tx pgx.Tx) {
	if t, ok := tx.(*callTx); ok && t != nil && t.end() {
		t.close()
	}
}

// BeginPlain begins a transaction without a key. It is a callTx too, so
// that a handler that calls Commit learns that the store commits.
func (d *driver) BeginPlain(ctx context.Context) (pgx.Tx, error) {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire a connection: %w", err)
	}
	tx, err := conn.BeginTx(ctx, d.opts)
	if err != nil {
		conn.Release() // pgx closed it if BEGIN broke it; Release then drops it
		return nil, fmt.Errorf("begin a transaction: %w", err)
	}
	return newCallTx(tx, conn), nil
}

// CommitPlain commits a transaction of BeginPlain's.
func (d *driver) CommitPlain(tx pgx.Tx) error {
	t, err := ending(tx, "CommitPlain")
	if err != nil {
		return err
	}
	defer t.close()
	if err := t.unfit(); err != nil {
		return err
	}
	return t.tx.Commit(context.Background())
}

// ending marks tx, a transaction this store began, ended for op (Commit
// or CommitPlain), so that nothing else ends it; the caller closes it.
func ending(tx pgx.Tx, op string) (*callTx, error) {
	t, ok := tx.(*callTx)
	if !ok {
		return nil, fmt.Errorf("pgxstore: %s of a %T, not a transaction this store began", op, tx)
	}
	if !t.end() {
		return nil, fmt.Errorf("commit: %w", pgx.ErrTxClosed)
	}
	return t, nil
}

// unfit says why t cannot be committed as fn left it; nothing is sent then.
func (t *callTx) unfit() error {
	pc := t.conn.Conn().PgConn()
	switch {
	case pc.IsClosed():
		// The connection broke while fn ran (and fn did not return the
		// error): the transaction went with it.
		return fmt.Errorf("the connection broke while fn ran: %w", pgconn.ErrConnClosed)
	case pc.IsBusy():
		return errOpenRows
	case pc.TxStatus() == 'I':
		// Not the database: fn sent COMMIT or ROLLBACK itself (through
		// Exec or tx.Conn()), and whatever it wrote after that committed
		// on its own. A COMMIT now would find no transaction, and Postgres
		// would only warn.
		return fmt.Errorf("fn ended the transaction itself (an Exec of COMMIT or ROLLBACK): %w", dialects.ErrTransactionEnded)
	}
	return nil
}

// errOpenRows is unfit's answer when fn returned with a query on tx still
// open: no COMMIT is sent, so nothing committed.
var errOpenRows = errors.New("fn returned with a query on tx still open, so nothing was committed: close every pgx.Rows before fn returns")

// Savepoint and the two below run in a caller's transaction (DoTx). They
// send no arguments, so pgx sends them as simple queries: no statement is
// prepared for each savepoint name. They do not obey ctx, as the
// database/sql driver's do not: pgx answers a cancelled statement by closing
// the connection, which would end the caller's whole transaction.
func (d *driver) Savepoint(ctx context.Context, tx pgx.Tx, name string) error {
	_, err := tx.Exec(context.WithoutCancel(ctx), "savepoint "+name)
	return err
}

// RollbackTo rolls back to the savepoint and releases it, in one round trip.
func (d *driver) RollbackTo(ctx context.Context, tx pgx.Tx, name string) error {
	_, err := tx.Exec(context.WithoutCancel(ctx), "rollback to savepoint "+name+"; release savepoint "+name)
	return err
}

// Release releases the savepoint.
func (d *driver) Release(ctx context.Context, tx pgx.Tx, name string) error {
	_, err := tx.Exec(context.WithoutCancel(ctx), "release savepoint "+name)
	return err
}

// Claim claims k in a caller's transaction.
func (d *driver) Claim(ctx context.Context, tx pgx.Tx, k dialects.Key, _ []byte, _ time.Duration) (dialects.Claim, dialects.Record, error) {
	var c claimRow
	if err := c.scan(tx.QueryRow(ctx, d.sql.Claim, k.Lock, k.Scope, k.Key)); err != nil {
		return 0, dialects.Record{}, err
	}
	claim, rec := c.result()
	return claim, rec, nil
}

// Save saves rec in a caller's transaction, or reports false when a live
// record holds the key. It is the upsert, not Commit's INSERT: here no
// COMMIT follows, and a row count says as much as an error would.
func (d *driver) Save(ctx context.Context, tx pgx.Tx, k dialects.Key, rec dialects.Record, ttl time.Duration) (bool, error) {
	tag, err := tx.Exec(ctx, d.sql.Save, k.Scope, k.Key, rec.Fingerprint, rec.Value, rec.Failed, ttl.Microseconds())
	if err != nil {
		return false, postgres.SaveError(err)
	}
	if tag.RowsAffected() == 1 {
		return true, nil
	}
	// Nothing saved: a live record holds the key, or fn ended the
	// caller's transaction (an Exec of COMMIT) and the save ran on its own.
	var in bool
	if err := tx.QueryRow(ctx, d.sql.Claimed).Scan(&in); err != nil {
		return false, err
	}
	if !in {
		return false, postgres.Ended()
	}
	return false, nil
}

// Lookup reads k's live record on the pool.
func (d *driver) Lookup(ctx context.Context, k dialects.Key) (dialects.Record, bool, error) {
	return lookup(d.pool.QueryRow(ctx, d.sql.Lookup, k.Scope, k.Key))
}

// LookupTx reads k's live record in tx.
func (d *driver) LookupTx(ctx context.Context, tx pgx.Tx, k dialects.Key) (dialects.Record, bool, error) {
	return lookup(tx.QueryRow(ctx, d.sql.Lookup, k.Scope, k.Key))
}

func lookup(row pgx.Row) (dialects.Record, bool, error) {
	var rec dialects.Record
	err := row.Scan(&rec.Fingerprint, &rec.Value, &rec.Failed)
	if errors.Is(err, pgx.ErrNoRows) {
		return dialects.Record{}, false, nil
	}
	return rec, err == nil, err
}

// DeleteExpired removes k's row if it has expired.
func (d *driver) DeleteExpired(ctx context.Context, k dialects.Key) error {
	_, err := d.pool.Exec(ctx, d.sql.DeleteExpired, k.Scope, k.Key)
	return err
}

// DeleteExpiredTx removes k's row in tx if it has expired.
func (d *driver) DeleteExpiredTx(ctx context.Context, tx pgx.Tx, k dialects.Key) error {
	_, err := tx.Exec(ctx, d.sql.DeleteExpired, k.Scope, k.Key)
	return err
}

// Prune deletes at most limit expired rows. The limit is written into the
// statement, as the database/sql dialect does, so that the plan knows the
// batch size; with no arguments pgx sends it as a simple query and keeps no
// prepared statement per limit.
func (d *driver) Prune(ctx context.Context, limit int) (int64, error) {
	tag, err := d.pool.Exec(ctx, fmt.Sprintf(d.sql.Prune, limit))
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// Classify sorts pgx's errors as the Postgres dialect does. pgx's own
// ErrTxClosed and ErrTxCommitRollback are definite: the first sent
// nothing, the second is the server's answer that nothing committed; so is
// errOpenRows, which sent no COMMIT.
func (d *driver) Classify(err error) dialects.Class {
	if errors.Is(err, pgx.ErrTxClosed) || errors.Is(err, pgx.ErrTxCommitRollback) || errors.Is(err, errOpenRows) {
		return dialects.Definite
	}
	return postgres.Classify(err)
}
