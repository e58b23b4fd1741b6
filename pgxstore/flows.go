package pgxstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency/dialects"
)

// The flows of the pgx store send the Postgres dialect's flow statements
// (postgres.FlowSQL), so that a pgx store and a database/sql store share
// the flow tables as they share the key table. A step's transaction is
// pipelined as Do's is: [BEGIN, fence] before fn, and [check the fence
// and extend the lease, record, COMMIT] after it; the last step's
// transaction stores the flow's value in place of its record. A new flow
// begins in its first step's transaction (BeginFlow).
var (
	_ dialects.FlowDriver[pgx.Tx]   = (*driver)(nil)
	_ dialects.StepFinisher         = (*driver)(nil)
	_ dialects.FlowBeginner[pgx.Tx] = (*driver)(nil)
)

// savepoint is where UndoStep goes back to in a transaction of
// BeginFlow's: after the flow's row, before the first step's writes.
const savepoint = "idempotency_flow_started"

// BeginFlow sends BEGIN, the Begin statement and a savepoint as one
// pipeline. Unless it started the flow, it rolls back (a second exchange)
// and reports what it read.
func (d *driver) BeginFlow(ctx context.Context, k dialects.Key, row dialects.FlowRow, lease time.Duration, f dialects.Fence) (pgx.Tx, dialects.FlowStart, error) {
	st := dialects.FlowStart{Row: dialects.FlowRow{Scope: k.Scope, Key: k.Key}}
	var (
		locked             *bool
		recFailed, expired *bool
		token              *int64
		resumes            *int
		flow, lastError    *string
	)
	t, err := d.beginWith(ctx, func(b *pgx.Batch) {
		b.Queue(d.flows.Begin, k.Scope, k.Key, k.Lock, row.Flow, row.Fingerprint, row.Params, d.units(lease), f.Mark).QueryRow(func(r pgx.Row) error {
			return r.Scan(&st.Started, &locked, &st.Record.Fingerprint, &st.Record.Value, &recFailed,
				&flow, &st.Row.Fingerprint, &st.Row.Params, &token, &resumes, &lastError, &expired)
		})
		b.Queue("savepoint " + savepoint)
	}, func() bool { return st.Started })
	if err != nil {
		return nil, st, fmt.Errorf("begin the flow: %w", err)
	}
	if t != nil {
		return t, st, nil
	}
	st.Recorded = st.Record.Fingerprint != nil
	st.Record.Failed = recFailed != nil && *recFailed
	if st.Running = flow != nil; st.Running {
		st.Row.Flow, st.Row.Token, st.Row.Resumes, st.Row.LastError, st.Row.Expired = *flow, *token, *resumes, *lastError, *expired
	}
	st.Held = locked != nil && !*locked
	return nil, st, nil
}

// beginWith acquires a connection and sends BEGIN and the statements queue
// adds as one pipeline. When keep reports true afterwards, it returns the
// open transaction; otherwise (and on an error) it rolls back, gives the
// connection back, and returns a nil transaction.
func (d *driver) beginWith(ctx context.Context, queue func(b *pgx.Batch), keep func() bool) (pgx.Tx, error) {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire a connection: %w", err)
	}
	b := &pgx.Batch{}
	b.BeginTx(d.opts)
	queue(b)
	br := conn.Conn().SendBatch(ctx, b)
	err = br.Close()
	t := newCallTx(br.Tx(), conn)
	if err != nil || !keep() {
		t.end()
		t.close() // rolls back
		return nil, err
	}
	return t, nil
}

// UndoStep rolls back to the savepoint BeginFlow made.
func (d *driver) UndoStep(ctx context.Context, tx pgx.Tx) error {
	t, ok := tx.(*callTx)
	if !ok {
		return fmt.Errorf("pgxstore: UndoStep: a %T, not a transaction of the store's", tx)
	}
	if t.ended.Load() {
		return pgx.ErrTxClosed
	}
	_, err := t.tx.Exec(ctx, "rollback to savepoint "+savepoint)
	return err
}

// sendCommit queues COMMIT after b's statements, sends them as one
// pipeline, and sorts the outcome as Commit does: a statement's error
// means nothing committed and is returned as it is, with i its index; an
// error at COMMIT, or a broken connection once the pipeline was under
// way, is a *dialects.CommitError.
func sendCommit(ctx context.Context, conn *pgxpool.Conn, b *pgx.Batch) (i int, err error) {
	n := b.Len()
	b.Queue("commit")
	br := conn.Conn().SendBatch(context.WithoutCancel(ctx), b)
	var tag pgconn.CommandTag
	for ; i <= n; i++ {
		if tag, err = br.Exec(); err != nil {
			break
		}
	}
	_ = br.Close()
	switch {
	case err == nil && tag.String() != "COMMIT":
		return i, &dialects.CommitError{Err: fmt.Errorf("commit answered %q: %w", tag.String(), pgx.ErrTxCommitRollback)}
	case err == nil:
		return i, nil
	case i == n, !answered(err):
		return i, &dialects.CommitError{Err: err}
	}
	return i, err
}

// FinishInStep: the last step's transaction of a flow also stores its
// value.
func (d *driver) FinishInStep() bool { return true }

func (d *driver) units(lease time.Duration) int64 { return int64(lease / d.flows.LeaseUnit) }

func (d *driver) InsertFlow(ctx context.Context, k dialects.Key, r dialects.FlowRow, lease time.Duration) (bool, error) {
	tag, err := d.pool.Exec(ctx, d.flows.Insert, k.Scope, k.Key, r.Flow, r.Fingerprint, r.Params, d.units(lease))
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

func (d *driver) ReadFlow(ctx context.Context, k dialects.Key) (dialects.FlowRow, bool, error) {
	r := dialects.FlowRow{Scope: k.Scope, Key: k.Key}
	err := d.pool.QueryRow(ctx, d.flows.Read, k.Scope, k.Key).Scan(&r.Flow, &r.Fingerprint, &r.Params, &r.Token, &r.Resumes, &r.LastError, &r.Expired)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	return r, err == nil, err
}

// TakeOverFlow locks the row with SKIP LOCKED, so that it passes over a
// flow whose step is under way, and moves its token on.
func (d *driver) TakeOverFlow(ctx context.Context, k dialects.Key, token int64, lease time.Duration) (bool, error) {
	tx, err := d.pool.BeginTx(ctx, d.opts)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var seen int64
	err = tx.QueryRow(ctx, d.flows.Lock, k.Scope, k.Key, token).Scan(&seen)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	tag, err := tx.Exec(ctx, d.flows.TakeOver, d.units(lease), k.Scope, k.Key, token)
	if err != nil || tag.RowsAffected() != 1 {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	return true, nil
}

func (d *driver) FlowSteps(ctx context.Context, k dialects.Key) ([]dialects.StepRow, error) {
	rows, err := d.pool.Query(ctx, d.flows.Steps, k.Scope, k.Key)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (dialects.StepRow, error) {
		var st dialects.StepRow
		err := row.Scan(&st.Seq, &st.Name, &st.Value)
		return st, err
	})
}

// BeginStep sends BEGIN and the fence (LockFence: the row locked, the
// transaction marked) as one pipeline.
func (d *driver) BeginStep(ctx context.Context, k dialects.Key, f dialects.Fence, _ time.Duration) (pgx.Tx, bool, error) {
	fenced := false
	t, err := d.beginWith(ctx, func(b *pgx.Batch) {
		b.Queue(d.flows.LockFence, k.Scope, k.Key, f.Token, f.Mark).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				fenced = true
			}
			return rows.Err()
		})
	}, func() bool { return fenced })
	if err != nil {
		return nil, false, fmt.Errorf("begin and fence the flow: %w", err)
	}
	return t, t != nil, nil
}

// RecordStep sends the lease's extension with the steps' records
// (RecordOrFail) and COMMIT as one pipeline. The statement fails where the
// row lacks the transaction's mark, and an error stops what follows it,
// the COMMIT included.
func (d *driver) RecordStep(ctx context.Context, tx pgx.Tx, k dialects.Key, f dialects.Fence, steps []dialects.StepRow, lease time.Duration) error {
	return d.commitWith(ctx, tx, "RecordStep", func(b *pgx.Batch) {
		seqs, names, values := make([]int32, len(steps)), make([]string, len(steps)), make([][]byte, len(steps))
		for i, step := range steps {
			seqs[i], names[i], values[i] = int32(step.Seq), step.Name, step.Value
		}
		b.Queue(d.flows.RecordOrFail, d.units(lease), k.Scope, k.Key, f.Token, f.Mark, seqs, names, values)
	})
}

// FinishFlow sends the deletion of an expired record of the key, then the
// mark's check with the flow's end (FinishOrFail: the key's record, the
// deletion of the flow's rows) and COMMIT, as one pipeline.
func (d *driver) FinishFlow(ctx context.Context, tx pgx.Tx, k dialects.Key, f dialects.Fence, rec dialects.Record, ttl time.Duration) error {
	return d.commitWith(ctx, tx, "FinishFlow", func(b *pgx.Batch) {
		b.Queue(d.flows.DeleteExpiredKey, k.Scope, k.Key)
		b.Queue(d.flows.FinishOrFail, k.Scope, k.Key, f.Token, f.Mark, rec.Fingerprint, rec.Value, rec.Failed, d.units(ttl))
	})
}

// commitWith sends the statements queue adds, then COMMIT, in one
// pipeline (sendCommit). One of them is RecordOrFail or FinishOrFail,
// whose division by zero says that the transaction is not the one
// BeginStep fenced.
func (d *driver) commitWith(ctx context.Context, tx pgx.Tx, op string, queue func(b *pgx.Batch)) error {
	t, err := ending(tx, op)
	if err != nil {
		return err
	}
	defer t.close()
	if err := t.unfit(); err != nil {
		return err
	}
	b := &pgx.Batch{}
	queue(b)
	_, err = sendCommit(ctx, t.conn, b)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "22012" && !errors.As(err, new(*dialects.CommitError)) {
		return fmt.Errorf("%w (fn ended it, or an error inside fn was not returned); nothing was recorded", dialects.ErrTransactionEnded)
	}
	return err
}

func (d *driver) ReleaseFlow(ctx context.Context, k dialects.Key, token int64, reason string) error {
	_, err := d.pool.Exec(ctx, d.flows.Release, reason, k.Scope, k.Key, token)
	return err
}

func (d *driver) DropFlow(ctx context.Context, k dialects.Key, token int64) error {
	tx, err := d.pool.BeginTx(ctx, d.opts)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	tag, err := tx.Exec(ctx, d.flows.DeleteFlow, k.Scope, k.Key, token)
	if err != nil || tag.RowsAffected() != 1 {
		return err // another owner has it: its steps are its own
	}
	if _, err := tx.Exec(ctx, d.flows.DeleteSteps, k.Scope, k.Key); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func (d *driver) ExpiredFlows(ctx context.Context, flow string, limit int) ([]dialects.FlowRow, error) {
	rows, err := d.pool.Query(ctx, d.flows.Expired, flow, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (dialects.FlowRow, error) {
		r := dialects.FlowRow{Flow: flow, Expired: true}
		var overdue int64
		err := row.Scan(&r.Scope, &r.Key, &r.Fingerprint, &r.Params, &r.Token, &r.Resumes, &r.LastError, &overdue)
		r.Overdue = time.Duration(overdue) * time.Millisecond
		return r, err
	})
}
