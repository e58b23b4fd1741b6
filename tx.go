package idempotency

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/dialects"
)

// Result is what Run returns: fn's value, and whether it was replayed from
// the stored record rather than computed by this call.
type Result[T any] struct {
	Value    T
	Replayed bool
}

// Do runs fn exactly once for key within the store's scope, in a transaction
// that also records the key and fn's value, and returns the value.
//
// A call whose key already committed does not run fn: it returns the stored
// value (decoded from JSON, as the first call's value was too) when params
// match, and ErrParamsMismatch when they do not. A call whose twin is still
// running waits for it (WithWait), then replays its value, or runs fn if the
// twin rolled back. When fn returns an error, everything rolls back and the
// error is returned unchanged, unless it is a FinalError (see Final), which
// is stored and replayed. Serialization failures and deadlocks roll the
// attempt back and run it again (WithMaxRetries).
//
// fn must make its database writes through tx: calls to other systems are
// not undone by a rollback, and fn may run more than once when an attempt is
// rolled back. Write an outbox row through tx instead, and send it after the
// commit. fn must return every error tx gives it and must not commit or
// roll back tx itself: where the database has ended the transaction (MySQL
// on a deadlock), Do reports ErrTransactionEnded.
func Do[T any](ctx context.Context, s *Store, key string, params any, fn func(ctx context.Context, tx *sqlx.Tx) (T, error)) (T, error) {
	r, err := run(ctx, s, nil, key, params, fn)
	return r.Value, err
}

// Run is Do that also reports whether the value was replayed.
func Run[T any](ctx context.Context, s *Store, key string, params any, fn func(ctx context.Context, tx *sqlx.Tx) (T, error)) (Result[T], error) {
	return run(ctx, s, nil, key, params, fn)
}

// DoTx is Do inside a transaction the caller already holds: the key row is
// written in tx, and commits or rolls back with it. Do's steps run under a
// savepoint, so an error from fn undoes fn's writes and the claim but leaves
// the rest of tx alone.
//
// DoTx cannot retry the caller's transaction: a serialization failure or a
// deadlock is returned (after it, tx must be rolled back; a new transaction
// with the same key is safe). On Postgres under REPEATABLE READ or
// SERIALIZABLE a twin that committed after tx's snapshot surfaces that way.
func DoTx[T any](ctx context.Context, tx *sqlx.Tx, s *Store, key string, params any, fn func(ctx context.Context, tx *sqlx.Tx) (T, error)) (T, error) {
	r, err := RunTx(ctx, tx, s, key, params, fn)
	return r.Value, err
}

// RunTx is DoTx that also reports whether the value was replayed.
func RunTx[T any](ctx context.Context, tx *sqlx.Tx, s *Store, key string, params any, fn func(ctx context.Context, tx *sqlx.Tx) (T, error)) (Result[T], error) {
	if tx == nil {
		return Result[T]{}, errors.New("idempotency: DoTx with a nil *sqlx.Tx: begin one, or call Do")
	}
	return run(ctx, s, tx, key, params, fn)
}

func run[T any](ctx context.Context, s *Store, outer *sqlx.Tx, key string, params any, fn func(context.Context, *sqlx.Tx) (T, error)) (res Result[T], err error) {
	if s == nil {
		return res, errors.New("idempotency: nil *Store: create one with idempotency.New")
	}
	if fn == nil {
		return res, errors.New("idempotency: nil fn: pass the function that does the work")
	}
	h := s.cfg.hooks
	if h.CallStart != nil {
		ctx = h.CallStart(ctx, s.scope, key)
	}
	var retries int
	if h.CallEnd != nil {
		start := time.Now()
		returned := false
		defer func() {
			e := CallEvent{Scope: s.scope, Key: key, Outcome: outcomeOf(res.Replayed, err),
				Retries: retries, Duration: time.Since(start), Err: err}
			if !returned {
				// fn panicked: the panic goes on, after the hook has seen it.
				e.Outcome, e.Err = Panicked, errPanicked
			}
			h.CallEnd(ctx, e)
		}()
		res, err = call(ctx, s, outer, key, params, fn, &retries)
		returned = true
		return res, err
	}
	return call(ctx, s, outer, key, params, fn, &retries)
}

// call is run without the hooks.
func call[T any](ctx context.Context, s *Store, outer *sqlx.Tx, key string, params any, fn func(context.Context, *sqlx.Tx) (T, error), retries *int) (res Result[T], err error) {
	k, err := s.key(key)
	if err != nil {
		return res, err
	}
	fp, err := Fingerprint(params)
	if err != nil {
		return res, err
	}
	var u unit = &ownTx{db: s.db, opts: s.cfg.txOptions}
	if outer != nil {
		u = &savepoint{tx: outer}
	}
	var (
		final *FinalError
		fresh T // fn's value as a replay will see it
	)
	work := func(ctx context.Context, tx *sqlx.Tx) ([]byte, bool, error) {
		v, err := fn(ctx, tx)
		if err != nil {
			if errors.As(err, &final) {
				b, err := final.encode()
				return b, true, err
			}
			return nil, false, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, false, fmt.Errorf("idempotency: fn's value cannot be encoded as JSON (nothing was committed): %w", err)
		}
		// Decode before anything is saved: a value whose JSON does not
		// decode into T would commit and then fail every call, retries
		// included. Decoding also gives the first answer a replay's shape.
		var zero T
		fresh = zero
		if err := json.Unmarshal(b, &fresh); err != nil {
			return nil, false, fmt.Errorf("idempotency: fn's value encodes to JSON that cannot be decoded back into %T, so it could never be replayed (nothing was committed): %w", fresh, err)
		}
		return b, false, nil
	}
	rec, replayed, err := s.loop(ctx, u, k, fp, work, retries)
	if err != nil {
		return res, err
	}
	res.Replayed = replayed
	switch {
	case rec.Failed && !replayed && final != nil:
		return res, final
	case rec.Failed:
		return res, decodeFailure(rec.Value)
	case !replayed:
		res.Value = fresh
		return res, nil
	}
	if err := json.Unmarshal(rec.Value, &res.Value); err != nil {
		return res, fmt.Errorf("idempotency: stored value cannot be decoded into %T: %w", res.Value, err)
	}
	return res, nil
}

// outcome is what one attempt asks the loop in call to do next.
type outcome int

const (
	done   outcome = iota // return rec and err
	replay                // a committed record answers the call
	again                 // start a new attempt now (a twin finished, a race was lost)
	retry                 // serialization failure or deadlock: back off, then again
	held                  // a twin holds the key: pause, then again, within the wait bound
	busy                  // the database is locked (SQLite): pause, then again, within the wait bound
	failed                // fn returned a final failure: store it, without calling fn again
)

// maxRestarts bounds attempts that start over without an error (a twin
// finished, an expired row was removed); each needs another call's progress.
const maxRestarts = 100

// loop is the protocol's loop: it runs attempts until one commits, finds a
// record to replay, or fails for good.
func (s *Store) loop(ctx context.Context, u unit, k dialects.Key, fp []byte, work work, retries *int) (dialects.Record, bool, error) {
	var (
		restarts int
		polls    int
		deadline time.Time // of the wait for a twin, from when one is first seen
		stored   []byte    // a final failure to store instead of calling fn
	)
	if s.cfg.readFirst && !u.joined() {
		rec, ok, err := s.dialect.Lookup(ctx, s.db, k)
		if err != nil {
			if ctx.Err() != nil {
				return dialects.Record{}, false, ctx.Err()
			}
			return dialects.Record{}, false, fmt.Errorf("idempotency: read the stored key: %w", err)
		}
		if ok {
			return replayOf(rec, fp, k)
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return dialects.Record{}, false, err
		}
		out, rec, err := s.attempt(ctx, u, k, fp, work, stored)
		switch out {
		case done:
			return rec, false, err
		case replay:
			return replayOf(rec, fp, k)
		case failed:
			stored = rec.Value
			restarts++
		case again:
			restarts++
		case retry:
			*retries++
			if u.joined() {
				return dialects.Record{}, false, fmt.Errorf("idempotency: the caller's transaction must be retried: %w", err)
			}
			if *retries > s.cfg.maxRetries {
				return dialects.Record{}, false, fmt.Errorf("idempotency: gave up after %d retries: %w", s.cfg.maxRetries, err)
			}
			s.cfg.logger.DebugContext(ctx, "idempotency: retrying after a conflict", "key", k.Key, "retry", *retries, "err", err)
			if err := sleep(ctx, backoff(*retries)); err != nil {
				return dialects.Record{}, false, err
			}
			continue
		case held, busy:
			// Wait for the twin with no transaction open and no connection
			// held: pause, then claim again. The claim replays the twin's
			// record once it has committed, and takes the key if it rolled
			// back.
			if polls == 0 {
				deadline = time.Now().Add(s.cfg.wait)
			}
			polls++
			left := time.Until(deadline)
			if left <= 0 || (out == busy && u.joined()) {
				if err == nil {
					err = errors.New("the key is held by a call that is still running")
				}
				return dialects.Record{}, false, fmt.Errorf("%w: key %q (waited %v): %w", ErrInProgress, k.Key, s.cfg.wait, err)
			}
			if err := sleep(ctx, min(pause(polls), left)); err != nil {
				return dialects.Record{}, false, err
			}
			continue
		}
		if restarts > maxRestarts {
			return dialects.Record{}, false, fmt.Errorf("idempotency: key %q: gave up after %d attempts that each found the key changed under them", k.Key, restarts)
		}
	}
}

// replayOf answers a call from a stored record, if params match.
func replayOf(rec dialects.Record, fp []byte, k dialects.Key) (dialects.Record, bool, error) {
	if !bytes.Equal(rec.Fingerprint, fp) {
		return dialects.Record{}, false, fmt.Errorf("%w: key %q", ErrParamsMismatch, k.Key)
	}
	return rec, true, nil
}

// work runs fn in the attempt's transaction and encodes its value, or its
// final failure (failed), as JSON.
type work func(ctx context.Context, tx *sqlx.Tx) (value []byte, failed bool, err error)

// attempt runs one transaction of the protocol: claim, fn, save, commit.
// With a stored failure it does not call fn: it saves the failure instead.
func (s *Store) attempt(ctx context.Context, u unit, k dialects.Key, fp []byte, work work, stored []byte) (outcome, dialects.Record, error) {
	var none dialects.Record
	d := s.dialect
	tx, err := u.begin(ctx)
	if err != nil {
		return s.classify(ctx, "begin a transaction", err)
	}
	// Rolls back on every path that does not commit, panics included.
	defer u.rollback()

	claim, rec, err := d.Claim(ctx, tx, k, fp, s.cfg.ttl)
	if err != nil {
		u.rollback() // and nothing else: see the mysql dialect
		return s.classify(ctx, "claim the key", err)
	}
	switch claim {
	case dialects.Found:
		u.rollback()
		return replay, rec, nil
	case dialects.Taken:
		u.rollback()
		return s.afterTaken(ctx, u, k)
	case dialects.Held:
		u.rollback()
		return held, none, nil
	}

	rec = dialects.Record{Fingerprint: fp, Value: stored, Failed: stored != nil}
	if stored == nil {
		value, final, err := work(ctx, tx)
		switch {
		case err != nil:
			u.rollback()
			if d.Classify(err) == dialects.Retry {
				return retry, none, err
			}
			return done, none, err
		case final:
			// Undo fn's writes; the next attempt stores the failure alone.
			u.rollback()
			return failed, dialects.Record{Value: value}, nil
		}
		rec.Value = value
	}
	if err := ctx.Err(); err != nil {
		return done, none, err
	}
	ok, err := d.Save(ctx, tx, k, rec, s.cfg.ttl)
	if errors.Is(err, dialects.ErrTransactionEnded) {
		u.rollback()
		s.cfg.logger.ErrorContext(ctx, "idempotency: the database ended the transaction while fn ran and fn ignored the error; its later writes may have committed outside the transaction",
			"scope", k.Scope, "key", k.Key, "err", err)
		return done, none, fmt.Errorf("%w: key %q: %w", ErrTransactionEnded, k.Key, err)
	}
	if err != nil {
		u.rollback()
		return s.classify(ctx, "save the key", err)
	}
	if !ok {
		u.rollback()
		return again, none, nil
	}
	if err := ctx.Err(); err != nil {
		return done, none, err
	}
	if err := u.commit(); err != nil {
		switch d.Classify(err) {
		case dialects.Retry:
			return retry, none, err
		case dialects.Unknown, dialects.Lost:
			if !errors.Is(err, sql.ErrTxDone) {
				return done, none, fmt.Errorf("%w: key %q: %w", ErrOutcomeUnknown, k.Key, err)
			}
		}
		return done, none, fmt.Errorf("idempotency: commit (nothing was stored): %w", err)
	}
	return done, rec, nil
}

// afterTaken reads the row that made the claim fail, after the rollback.
func (s *Store) afterTaken(ctx context.Context, u unit, k dialects.Key) (outcome, dialects.Record, error) {
	for _, q := range u.readers(s.db) {
		rec, ok, err := s.dialect.Lookup(ctx, q, k)
		if err != nil {
			return s.classify(ctx, "read the stored key", err)
		}
		if ok {
			return replay, rec, nil
		}
	}
	// The row expired, or its holder rolled back: clear it and claim. Twins
	// that woke together all come here; a little jitter lets one of them win
	// the next claim cleanly.
	if err := s.dialect.DeleteExpired(ctx, s.db, k); err != nil {
		return s.classify(ctx, "delete the expired key", err)
	}
	if err := sleep(ctx, rand.N(time.Millisecond)); err != nil {
		return done, dialects.Record{}, err
	}
	return again, dialects.Record{}, nil
}

func (s *Store) classify(ctx context.Context, stage string, err error) (outcome, dialects.Record, error) {
	var none dialects.Record
	if ctx.Err() != nil {
		// The statement failed because ctx ended; say so plainly.
		return done, none, ctx.Err()
	}
	switch s.dialect.Classify(err) {
	case dialects.Retry:
		return retry, none, err
	case dialects.Lost:
		// Before COMMIT a broken connection took the whole transaction with
		// it: nothing committed, so the attempt can run again on another.
		return retry, none, fmt.Errorf("idempotency: %s: %w", stage, err)
	case dialects.LockTimeout:
		return done, none, fmt.Errorf("%w (waited %v): %w", ErrInProgress, s.cfg.wait, err)
	case dialects.Busy:
		return busy, none, err
	}
	return done, none, fmt.Errorf("idempotency: %s: %w", stage, err)
}

// pause is how long a call waits before it claims a held key again: 1ms,
// doubling to 32ms, jittered so that twins do not claim in step. A twin
// sees its holder's commit at most that late, and costs the database about
// one short transaction per pause.
func pause(poll int) time.Duration {
	ceiling := time.Millisecond << min(poll-1, 5)
	return ceiling/2 + rand.N(ceiling/2+1)
}

func backoff(attempt int) time.Duration {
	ceiling := time.Millisecond << min(attempt, 7) // 2ms, 4ms ... 128ms
	return ceiling/2 + rand.N(ceiling/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// unit is the transaction an attempt runs in: one Do begins and ends its
// own; DoTx runs each attempt under a savepoint of the caller's.
type unit interface {
	begin(ctx context.Context) (*sqlx.Tx, error)
	rollback()
	commit() error
	joined() bool
	// readers are where a stored row is looked up after a failed claim.
	readers(db *sqlx.DB) []dialects.Querier
}

type ownTx struct {
	db   *sqlx.DB
	opts *sql.TxOptions
	tx   *sqlx.Tx
	end  context.CancelFunc // releases the transaction's context
}

// begin obeys ctx while it waits for a pooled connection and for BEGIN
// (where SQLite waits for its write lock). Once the transaction has begun,
// its fate is decided here, not by ctx: database/sql rolls back a
// transaction whose context ends, even during COMMIT. fn and every
// statement still get ctx, and ctx is checked before COMMIT.
func (o *ownTx) begin(ctx context.Context) (*sqlx.Tx, error) {
	txCtx, end := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, end)
	tx, err := o.db.BeginTxx(txCtx, o.opts)
	if !stop() {
		// ctx ended before BEGIN was done: end went to the transaction
		// too, and database/sql rolls it back.
		end()
		if err == nil {
			_ = tx.Rollback()
		}
		return nil, ctx.Err()
	}
	if err != nil {
		end()
		return nil, err
	}
	o.tx, o.end = tx, end
	return tx, nil
}

func (o *ownTx) rollback() {
	if o.tx != nil {
		_ = o.tx.Rollback()
		o.tx = nil
		o.end()
	}
}

func (o *ownTx) commit() error {
	tx := o.tx
	o.tx = nil
	defer o.end()
	return tx.Commit()
}

func (o *ownTx) joined() bool { return false }

func (o *ownTx) readers(db *sqlx.DB) []dialects.Querier { return []dialects.Querier{db} }

var savepointSeq atomic.Uint64

type savepoint struct {
	tx   *sqlx.Tx
	ctx  context.Context
	name string
}

func (p *savepoint) begin(ctx context.Context) (*sqlx.Tx, error) {
	// Unique names: MySQL drops an older savepoint of the same name, which
	// would break a DoTx nested in another's fn.
	p.name = "idempotency_" + strconv.FormatUint(savepointSeq.Add(1), 10)
	p.ctx = context.WithoutCancel(ctx)
	if _, err := p.tx.ExecContext(p.ctx, "SAVEPOINT "+p.name); err != nil {
		p.name = ""
		return nil, err
	}
	return p.tx, nil
}

func (p *savepoint) rollback() {
	if p.name != "" {
		_, _ = p.tx.ExecContext(p.ctx, "ROLLBACK TO SAVEPOINT "+p.name)
		_, _ = p.tx.ExecContext(p.ctx, "RELEASE SAVEPOINT "+p.name)
		p.name = ""
	}
}

func (p *savepoint) commit() error {
	name := p.name
	p.name = ""
	_, err := p.tx.ExecContext(p.ctx, "RELEASE SAVEPOINT "+name)
	return err
}

func (p *savepoint) joined() bool { return true }

func (p *savepoint) readers(db *sqlx.DB) []dialects.Querier {
	return []dialects.Querier{p.tx, db}
}
