package dialects

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"
)

var (
	_ FlowDriver[*sqlx.Tx] = (*sqlDriver)(nil)
	_ StepFinisher         = (*sqlDriver)(nil)
)

// FinishInStep reports whether the dialect has flow statements that may
// store a flow's value in its last step's transaction.
func (s *sqlDriver) FinishInStep() bool { return s.flow != nil && !s.flow.FinishApart }

// flowStatements returns d's flow statements, or nil.
func flowStatements(d Dialect) *FlowStatements {
	if f, ok := d.(FlowDialect); ok {
		st := f.FlowStatements()
		return &st
	}
	return nil
}

// flows returns the dialect's flow statements, or an error that says it
// has none.
func (s *sqlDriver) flows() (*FlowStatements, error) {
	if s.flow == nil {
		return nil, fmt.Errorf("%s: %w", s.d.Name(), ErrNoFlows)
	}
	return s.flow, nil
}

// units converts d into the statements' lease unit.
func (f *FlowStatements) units(d time.Duration) int64 { return int64(d / f.LeaseUnit) }

func (s *sqlDriver) InsertFlow(ctx context.Context, k Key, r FlowRow, lease time.Duration) (bool, error) {
	f, err := s.flows()
	if err != nil {
		return false, err
	}
	res, err := s.db.ExecContext(ctx, f.Insert, k.Scope, k.Key, r.Flow, r.Fingerprint, r.Params, f.units(lease))
	if err != nil {
		return false, err
	}
	return affected(res, 1)
}

func (s *sqlDriver) ReadFlow(ctx context.Context, k Key) (FlowRow, bool, error) {
	r := FlowRow{Scope: k.Scope, Key: k.Key}
	f, err := s.flows()
	if err != nil {
		return r, false, err
	}
	err = s.db.QueryRowxContext(ctx, f.Read, k.Scope, k.Key).Scan(&r.Flow, &r.Fingerprint, &r.Params, &r.Token, &r.Resumes, &r.LastError, &r.Expired)
	if errors.Is(err, sql.ErrNoRows) {
		return r, false, nil
	}
	return r, err == nil, err
}

func (s *sqlDriver) TakeOverFlow(ctx context.Context, k Key, token int64, lease time.Duration) (bool, error) {
	f, err := s.flows()
	if err != nil {
		return false, err
	}
	if f.Lock == "" {
		res, err := s.db.ExecContext(ctx, f.TakeOver, f.units(lease), k.Scope, k.Key, token)
		if err != nil {
			return false, err
		}
		return affected(res, 1)
	}
	// Lock skips a row that a step's transaction holds: its owner is
	// alive, whatever the lease says, and it would make the takeover wait.
	tx, err := s.begin(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback() }()
	var seen int64
	err = tx.QueryRowxContext(ctx, f.Lock, k.Scope, k.Key, token).Scan(&seen)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	res, err := tx.ExecContext(ctx, f.TakeOver, f.units(lease), k.Scope, k.Key, token)
	if err != nil {
		return false, err
	}
	if ok, err := affected(res, 1); !ok || err != nil {
		return false, err
	}
	if err := tx.Commit(); err != nil {
		return false, err
	}
	return true, nil
}

func (s *sqlDriver) FlowSteps(ctx context.Context, k Key) ([]StepRow, error) {
	f, err := s.flows()
	if err != nil {
		return nil, err
	}
	rows, err := s.db.QueryxContext(ctx, f.Steps, k.Scope, k.Key)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var steps []StepRow
	for rows.Next() {
		var st StepRow
		if err := rows.Scan(&st.Seq, &st.Name, &st.Value); err != nil {
			return nil, err
		}
		steps = append(steps, st)
	}
	return steps, rows.Err()
}

func (s *sqlDriver) BeginStep(ctx context.Context, k Key, fence Fence, lease time.Duration) (*sqlx.Tx, bool, error) {
	f, err := s.flows()
	if err != nil {
		return nil, false, err
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return nil, false, err
	}
	res, err := tx.ExecContext(ctx, f.Fence, f.units(lease), fence.Mark, k.Scope, k.Key, fence.Token)
	if err == nil {
		var ok bool
		if ok, err = affected(res, 1); ok {
			return tx, true, nil
		}
	}
	_ = tx.Rollback()
	if err != nil {
		return nil, false, fmt.Errorf("fence the flow: %w", err)
	}
	return nil, false, nil
}

func (s *sqlDriver) RecordStep(ctx context.Context, tx *sqlx.Tx, k Key, fence Fence, steps []StepRow, lease time.Duration) error {
	f := s.flow // BeginStep checked it
	if err := s.touch(ctx, tx, k, fence, lease); err != nil {
		return err
	}
	for _, step := range steps {
		if _, err := tx.ExecContext(ctx, f.Record, k.Scope, k.Key, step.Seq, step.Name, step.Value); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("record the step: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return &CommitError{Err: err}
	}
	return nil
}

// touch extends the lease, counted from the step's end rather than its
// start, so that a long step leaves its owner as long a lease as a short
// one; and it checks that tx is still the fenced transaction, before
// anything is recorded in it. It rolls tx back when it fails.
func (s *sqlDriver) touch(ctx context.Context, tx *sqlx.Tx, k Key, fence Fence, lease time.Duration) error {
	f := s.flow
	res, err := tx.ExecContext(ctx, f.Touch, f.units(lease), k.Scope, k.Key, fence.Token, fence.Mark)
	if err == nil {
		var ok bool
		if ok, err = affected(res, 1); !ok && err == nil {
			err = fmt.Errorf("%w (an error inside fn, such as a deadlock, was not returned, or fn ended tx itself); nothing was recorded, but writes fn made after it ran outside the transaction and may have committed", ErrTransactionEnded)
		}
	}
	if err != nil {
		_ = tx.Rollback()
		return fmt.Errorf("extend the lease: %w", err)
	}
	return nil
}

func (s *sqlDriver) FinishFlow(ctx context.Context, tx *sqlx.Tx, k Key, fence Fence, rec Record, ttl time.Duration) error {
	f := s.flow // BeginStep checked it
	if err := s.touch(ctx, tx, k, fence, time.Duration(0)); err != nil {
		return err
	}
	fail := func(what string, err error) error {
		_ = tx.Rollback()
		return fmt.Errorf("%s: %w", what, err)
	}
	if _, err := tx.ExecContext(ctx, f.DeleteExpiredKey, k.Scope, k.Key); err != nil {
		return fail("delete the key's expired record", err)
	}
	if _, err := tx.ExecContext(ctx, f.InsertKey, k.Scope, k.Key, rec.Fingerprint, rec.Value, rec.Failed, f.units(ttl)); err != nil {
		return fail("store the flow's record under its key (a call of Do with the same key may hold it)", err)
	}
	if _, err := tx.ExecContext(ctx, f.DeleteSteps, k.Scope, k.Key); err != nil {
		return fail("delete the flow's steps", err)
	}
	res, err := tx.ExecContext(ctx, f.DeleteFlow, k.Scope, k.Key, fence.Token)
	if err == nil {
		var ok bool
		if ok, err = affected(res, 1); !ok && err == nil {
			err = errors.New("the flow's row changed while its lock was held")
		}
	}
	if err != nil {
		return fail("delete the flow", err)
	}
	if err := tx.Commit(); err != nil {
		return &CommitError{Err: err}
	}
	return nil
}

func (s *sqlDriver) ReleaseFlow(ctx context.Context, k Key, token int64, reason string) error {
	f, err := s.flows()
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, f.Release, reason, k.Scope, k.Key, token)
	return err
}

func (s *sqlDriver) DropFlow(ctx context.Context, k Key, token int64) error {
	f, err := s.flows()
	if err != nil {
		return err
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, f.DeleteFlow, k.Scope, k.Key, token)
	if err != nil {
		return err
	}
	if ok, err := affected(res, 1); !ok || err != nil {
		return err // another owner has it: its steps are its own
	}
	if _, err := tx.ExecContext(ctx, f.DeleteSteps, k.Scope, k.Key); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *sqlDriver) ExpiredFlows(ctx context.Context, flow string, limit int) ([]FlowRow, error) {
	f, err := s.flows()
	if err != nil {
		return nil, err
	}
	rows, err := s.db.QueryxContext(ctx, f.Expired, flow, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []FlowRow
	for rows.Next() {
		r := FlowRow{Flow: flow, Expired: true}
		var overdue int64
		if err := rows.Scan(&r.Scope, &r.Key, &r.Fingerprint, &r.Params, &r.Token, &r.Resumes, &r.LastError, &overdue); err != nil {
			return nil, err
		}
		r.Overdue = time.Duration(overdue) * time.Millisecond
		out = append(out, r)
	}
	return out, rows.Err()
}

// affected reports whether res affected want rows.
func affected(res sql.Result, want int64) (bool, error) {
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("rows affected: %w", err)
	}
	return n == want, nil
}
