package sqlstore

import (
	"context"
	"database/sql"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/dialects"
)

// driver serves *sql.Tx on top of the database/sql driver of the root
// package (dialects.SQL), which speaks *sqlx.Tx: a *sqlx.Tx is a *sql.Tx
// with a field mapper, so each call hands the inner driver the *sql.Tx
// dressed as one, and hands fn the bare *sql.Tx. Nothing is written twice:
// statements, claims, retries and error classes are the inner driver's.
type driver struct {
	x  dialects.Driver[*sqlx.Tx]
	db *sqlx.DB // for its field mapper
}

// flowDriver is driver with the inner driver's flows.
type flowDriver struct {
	*driver
	f dialects.FlowDriver[*sqlx.Tx]
}

var (
	_ dialects.Driver[*sql.Tx]     = (*driver)(nil)
	_ dialects.ReadFirster         = (*driver)(nil)
	_ dialects.OneWriter           = (*driver)(nil)
	_ dialects.FlowDriver[*sql.Tx] = (*flowDriver)(nil)
	_ dialects.StepFinisher        = (*flowDriver)(nil)
)

// wrap returns the *sql.Tx driver over x, with flows when x has them.
func wrap(x dialects.Driver[*sqlx.Tx], db *sqlx.DB) dialects.Driver[*sql.Tx] {
	d := &driver{x: x, db: db}
	if f, ok := x.(dialects.FlowDriver[*sqlx.Tx]); ok {
		return &flowDriver{driver: d, f: f}
	}
	return d
}

// in dresses tx for the inner driver. database/sql keeps all of a
// transaction's state in the *sql.Tx, so a new *sqlx.Tx around it per call
// is the same transaction: nothing the inner driver does depends on which
// *sqlx.Tx value it gets.
func (d *driver) in(tx *sql.Tx) *sqlx.Tx {
	if tx == nil {
		return nil
	}
	return &sqlx.Tx{Tx: tx, Mapper: d.db.Mapper}
}

// out is the *sql.Tx inside x, or nil.
func out(x *sqlx.Tx) *sql.Tx {
	if x == nil {
		return nil
	}
	return x.Tx
}

func (d *driver) Name() string { return d.x.Name() }

func (d *driver) ReadFirst() dialects.ReadFirst {
	if r, ok := d.x.(dialects.ReadFirster); ok {
		return r.ReadFirst()
	}
	return dialects.ReadFirstNever
}

func (d *driver) OneWriter() bool {
	o, ok := d.x.(dialects.OneWriter)
	return ok && o.OneWriter()
}

func (d *driver) Begin(ctx context.Context, k dialects.Key, fingerprint []byte, ttl time.Duration) (*sql.Tx, dialects.Claim, dialects.Record, error) {
	tx, c, rec, err := d.x.Begin(ctx, k, fingerprint, ttl)
	return out(tx), c, rec, err
}

func (d *driver) Commit(ctx context.Context, tx *sql.Tx, k dialects.Key, rec dialects.Record, ttl time.Duration) error {
	return d.x.Commit(ctx, d.in(tx), k, rec, ttl)
}

func (d *driver) Rollback(tx *sql.Tx) { d.x.Rollback(d.in(tx)) }

func (d *driver) BeginPlain(ctx context.Context) (*sql.Tx, error) {
	tx, err := d.x.BeginPlain(ctx)
	return out(tx), err
}

func (d *driver) CommitPlain(tx *sql.Tx) error { return d.x.CommitPlain(d.in(tx)) }

func (d *driver) Savepoint(ctx context.Context, tx *sql.Tx, name string) error {
	return d.x.Savepoint(ctx, d.in(tx), name)
}

func (d *driver) RollbackTo(ctx context.Context, tx *sql.Tx, name string) error {
	return d.x.RollbackTo(ctx, d.in(tx), name)
}

func (d *driver) Release(ctx context.Context, tx *sql.Tx, name string) error {
	return d.x.Release(ctx, d.in(tx), name)
}

func (d *driver) Claim(ctx context.Context, tx *sql.Tx, k dialects.Key, fingerprint []byte, ttl time.Duration) (dialects.Claim, dialects.Record, error) {
	return d.x.Claim(ctx, d.in(tx), k, fingerprint, ttl)
}

func (d *driver) Save(ctx context.Context, tx *sql.Tx, k dialects.Key, rec dialects.Record, ttl time.Duration) (bool, error) {
	return d.x.Save(ctx, d.in(tx), k, rec, ttl)
}

func (d *driver) Lookup(ctx context.Context, k dialects.Key) (dialects.Record, bool, error) {
	return d.x.Lookup(ctx, k)
}

func (d *driver) LookupTx(ctx context.Context, tx *sql.Tx, k dialects.Key) (dialects.Record, bool, error) {
	return d.x.LookupTx(ctx, d.in(tx), k)
}

func (d *driver) DeleteExpired(ctx context.Context, k dialects.Key) error {
	return d.x.DeleteExpired(ctx, k)
}

func (d *driver) DeleteExpiredTx(ctx context.Context, tx *sql.Tx, k dialects.Key) error {
	return d.x.DeleteExpiredTx(ctx, d.in(tx), k)
}

func (d *driver) Prune(ctx context.Context, limit int) (int64, error) { return d.x.Prune(ctx, limit) }

func (d *driver) Classify(err error) dialects.Class { return d.x.Classify(err) }

// Flows: the inner driver's, with the step's transaction dressed and
// undressed as above.

func (d *flowDriver) FinishInStep() bool {
	s, ok := d.f.(dialects.StepFinisher)
	return ok && s.FinishInStep()
}

func (d *flowDriver) InsertFlow(ctx context.Context, k dialects.Key, f dialects.FlowRow, lease time.Duration) (bool, error) {
	return d.f.InsertFlow(ctx, k, f, lease)
}

func (d *flowDriver) ReadFlow(ctx context.Context, k dialects.Key) (dialects.FlowRow, bool, error) {
	return d.f.ReadFlow(ctx, k)
}

func (d *flowDriver) TakeOverFlow(ctx context.Context, k dialects.Key, token int64, lease time.Duration) (bool, error) {
	return d.f.TakeOverFlow(ctx, k, token, lease)
}

func (d *flowDriver) FlowSteps(ctx context.Context, k dialects.Key) ([]dialects.StepRow, error) {
	return d.f.FlowSteps(ctx, k)
}

func (d *flowDriver) BeginStep(ctx context.Context, k dialects.Key, f dialects.Fence, lease time.Duration) (*sql.Tx, bool, error) {
	tx, ok, err := d.f.BeginStep(ctx, k, f, lease)
	return out(tx), ok, err
}

func (d *flowDriver) RecordStep(ctx context.Context, tx *sql.Tx, k dialects.Key, f dialects.Fence, steps []dialects.StepRow, lease time.Duration) error {
	return d.f.RecordStep(ctx, d.in(tx), k, f, steps, lease)
}

func (d *flowDriver) FinishFlow(ctx context.Context, tx *sql.Tx, k dialects.Key, f dialects.Fence, rec dialects.Record, ttl time.Duration) error {
	return d.f.FinishFlow(ctx, d.in(tx), k, f, rec, ttl)
}

func (d *flowDriver) ReleaseFlow(ctx context.Context, k dialects.Key, token int64, reason string) error {
	return d.f.ReleaseFlow(ctx, k, token, reason)
}

func (d *flowDriver) DropFlow(ctx context.Context, k dialects.Key, token int64) error {
	return d.f.DropFlow(ctx, k, token)
}

func (d *flowDriver) ExpiredFlows(ctx context.Context, flow string, limit int) ([]dialects.FlowRow, error) {
	return d.f.ExpiredFlows(ctx, flow, limit)
}
