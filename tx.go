package idempotency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/exactlyonce/idempotency/dialects"
)

// Result is what Run returns: fn's value, and whether it was replayed from
// the stored record rather than computed by this call. Replayed is also
// true when the call returns a stored final failure (a *FinalError that an
// earlier call stored), with the zero Value.
type Result[T any] struct {
	Value    T
	Replayed bool
}

// Do runs fn exactly once for key within the store's scope, in a transaction
// that also records the key and fn's value, and returns the value.
//
// A call whose key already committed does not run fn: it returns the stored
// value (decoded by the store's Codec, JSON by default, as the first call's
// value was too) when params
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
func Do[T, TTx any](ctx context.Context, s *TxStore[TTx], key string, params any, fn func(ctx context.Context, tx TTx) (T, error)) (T, error) {
	r, err := run(ctx, s, nil, key, params, fn)
	return r.Value, err
}

// Run is Do that also reports whether the value was replayed.
func Run[T, TTx any](ctx context.Context, s *TxStore[TTx], key string, params any, fn func(ctx context.Context, tx TTx) (T, error)) (Result[T], error) {
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
func DoTx[T, TTx any](ctx context.Context, tx TTx, s *TxStore[TTx], key string, params any, fn func(ctx context.Context, tx TTx) (T, error)) (T, error) {
	r, err := RunTx(ctx, tx, s, key, params, fn)
	return r.Value, err
}

// RunTx is DoTx that also reports whether the value was replayed.
func RunTx[T, TTx any](ctx context.Context, tx TTx, s *TxStore[TTx], key string, params any, fn func(ctx context.Context, tx TTx) (T, error)) (Result[T], error) {
	if isNil(tx) {
		return Result[T]{}, fmt.Errorf("idempotency: DoTx with a nil %v: begin one, or call Do", reflect.TypeFor[TTx]())
	}
	return run(ctx, s, &tx, key, params, fn)
}

// InTx runs fn in a transaction of the store's, with no key: fn's writes
// commit when it returns nil and roll back when it returns an error or
// panics. It is for work that goes beside idempotent calls on the same
// transactions (the HTTP adapter runs requests without a key in it).
// Waiting for a connection obeys ctx; once begun, the transaction ends as fn
// says, whatever ctx does. A failed COMMIT is returned wrapped; its outcome
// is unknown when the connection broke. A driver that can tell that fn
// ended the transaction itself (the pgx store can) reports
// ErrTransactionEnded instead of committing.
func InTx[TTx any](ctx context.Context, s *TxStore[TTx], fn func(ctx context.Context, tx TTx) error) (err error) {
	if s == nil {
		return errors.New("idempotency: nil *Store: create one with idempotency.New")
	}
	if fn == nil {
		return errors.New("idempotency: InTx with a nil fn: pass the function that does the work")
	}
	tx, err := s.driver.BeginPlain(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("idempotency: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			s.driver.Rollback(tx) // panics included
		}
	}()
	if err := fn(ctx, tx); err != nil {
		return err
	}
	committed = true
	if err := s.driver.CommitPlain(tx); err != nil {
		if errors.Is(err, dialects.ErrTransactionEnded) {
			return fmt.Errorf("%w: %w", ErrTransactionEnded, err)
		}
		switch s.driver.Classify(err) {
		case dialects.Unknown, dialects.Lost:
			return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
		}
		return fmt.Errorf("idempotency: commit (nothing was committed): %w", err)
	}
	return nil
}

// isNil reports whether a transaction value is a nil pointer or interface.
func isNil[TTx any](tx TTx) bool {
	var v any = tx
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

func run[T, TTx any](ctx context.Context, s *TxStore[TTx], outer *TTx, key string, params any, fn func(context.Context, TTx) (T, error)) (res Result[T], err error) {
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
func call[T, TTx any](ctx context.Context, s *TxStore[TTx], outer *TTx, key string, params any, fn func(context.Context, TTx) (T, error), retries *int) (res Result[T], err error) {
	k, err := s.key(key)
	if err != nil {
		return res, err
	}
	fp, err := Fingerprint(params)
	if err != nil {
		return res, err
	}
	var u unit[TTx] = ownTx[TTx]{s.driver}
	if outer != nil {
		u = &savepoint[TTx]{d: s.driver, tx: *outer}
	}
	var (
		final *FinalError
		fresh T // fn's value as a replay will see it
		codec = s.valueCodec()
	)
	work := func(ctx context.Context, tx TTx) ([]byte, bool, error) {
		v, err := fn(ctx, tx)
		if err != nil {
			if errors.As(err, &final) {
				b, err := final.encode()
				return b, true, err
			}
			return nil, false, err
		}
		b, err := encode(codec, v)
		if err != nil {
			return nil, false, fmt.Errorf("idempotency: fn's value cannot be encoded as %s (nothing was committed): %w", codecName(codec), err)
		}
		// Decode before anything is saved: a value whose encoding does not
		// decode into T would commit and then fail every call, retries
		// included. Decoding also gives the first answer a replay's shape.
		var zero T
		fresh = zero
		if err := decode(codec, b, &fresh); err != nil {
			return nil, false, fmt.Errorf("idempotency: fn's value encodes to %s that cannot be decoded back into %T, so it could never be replayed (nothing was committed): %w", codecName(codec), fresh, err)
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
	if err := decode(codec, rec.Value, &res.Value); err != nil {
		return res, fmt.Errorf("idempotency: stored value cannot be decoded (%s) into %T: %w", codecName(codec), res.Value, err)
	}
	return res, nil
}

// outcome is what one attempt asks the loop to do next.
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
func (s *TxStore[TTx]) loop(ctx context.Context, u unit[TTx], k dialects.Key, fp []byte, work work[TTx], retries *int) (dialects.Record, bool, error) {
	var (
		restarts int
		polls    int
		deadline time.Time // of the wait for a twin, from when one is first seen
		stored   []byte    // a final failure to store instead of calling fn
	)
	if !u.joined() && s.reads.first() {
		rec, ok, err := s.driver.Lookup(ctx, k)
		switch {
		case err != nil && ctx.Err() != nil:
			return dialects.Record{}, false, ctx.Err()
		case err != nil:
			// The read is a shortcut. The claim reads the key again, in the
			// transaction, and knows which errors to wait out or retry (a
			// busy SQLite, a lost connection); the others it returns.
		case ok:
			s.reads.saw(true)
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
			if err == nil && !u.joined() {
				s.reads.saw(false)
			}
			return rec, false, err
		case replay:
			if !u.joined() {
				s.reads.saw(true)
			}
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

// reads decides whether a call reads its key before its transaction, by
// the store's policy (dialects.ReadFirst); for ReadFirstAdaptive, from the
// share of its recent calls that replayed.
type reads struct {
	policy dialects.ReadFirst
	// replayed is that share, in 1/65536, as a moving average over about
	// the last 16 calls that committed or replayed. Updates from calls that
	// end together may be lost: it is an estimate.
	replayed atomic.Int32
}

// readFirstAbove is the share of replays above which adaptive calls read
// first. Measured, a read first costs a fresh call about a third of what
// it saves a replay: one statement against three on MariaDB, 18µs against
// 48µs of CPU on SQLite. Reading first pays above a quarter.
const readFirstAbove = 1 << 16 / 4

func (r *reads) first() bool {
	switch r.policy {
	case dialects.ReadFirstAlways:
		return true
	case dialects.ReadFirstAdaptive:
		return r.replayed.Load() > readFirstAbove
	}
	return false
}

// saw records a call that replayed, or that committed fn's value.
func (r *reads) saw(replayed bool) {
	if r.policy != dialects.ReadFirstAdaptive {
		return
	}
	var x int32
	if replayed {
		x = 1 << 16
	}
	v := r.replayed.Load()
	r.replayed.Store(v + (x-v)/16)
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
type work[TTx any] func(ctx context.Context, tx TTx) (value []byte, failed bool, err error)

// attempt runs one transaction of the protocol: claim, fn, save, commit.
// With a stored failure it does not call fn: it saves the failure instead.
func (s *TxStore[TTx]) attempt(ctx context.Context, u unit[TTx], k dialects.Key, fp []byte, work work[TTx], stored []byte) (outcome, dialects.Record, error) {
	var none dialects.Record
	tx, claim, rec, err := u.begin(ctx, k, fp, s.cfg.ttl)
	if err != nil {
		return s.classify(ctx, "", err)
	}
	switch claim {
	case dialects.Found:
		return replay, rec, nil
	case dialects.Taken:
		return s.afterTaken(ctx, u, k)
	case dialects.Held:
		return held, none, nil
	}
	// The transaction is open until commit or rollback ends it; on every
	// path that does neither (a panic in fn), roll back.
	open := true
	defer func() {
		if open {
			u.rollback(tx)
		}
	}()
	end := func() { open = false; u.rollback(tx) }

	rec = dialects.Record{Fingerprint: fp, Value: stored, Failed: stored != nil}
	if stored == nil {
		value, final, err := work(ctx, tx)
		switch {
		case err != nil:
			end()
			if s.driver.Classify(err) == dialects.Retry {
				return retry, none, err
			}
			return done, none, err
		case final:
			// Undo fn's writes; the next attempt stores the failure alone.
			end()
			return failed, dialects.Record{Value: value}, nil
		}
		rec.Value = value
	}
	if err := ctx.Err(); err != nil {
		end()
		return done, none, err
	}
	open = false // commit ends the transaction, whatever it returns
	err = u.commit(ctx, tx, k, rec, s.cfg.ttl)
	var ce *dialects.CommitError
	switch {
	case err == nil:
		return done, rec, nil
	case errors.Is(err, dialects.ErrConflict):
		return again, none, nil
	case errors.Is(err, dialects.ErrTransactionEnded):
		return done, none, s.ended(ctx, k, err)
	case errors.As(err, &ce):
		switch s.driver.Classify(ce.Err) {
		case dialects.Retry:
			return retry, none, ce.Err
		case dialects.Unknown, dialects.Lost:
			return done, none, fmt.Errorf("%w: key %q: %w", ErrOutcomeUnknown, k.Key, ce.Err)
		}
		return done, none, fmt.Errorf("idempotency: commit (nothing was stored): %w", ce.Err)
	}
	return s.classify(ctx, "save the key", err)
}

// ended is the error of a call whose transaction ended before its save: fn
// ended it itself, or the database did and fn ignored the error.
func (s *TxStore[TTx]) ended(ctx context.Context, k dialects.Key, err error) error {
	s.cfg.logger.ErrorContext(ctx, "idempotency: the call's transaction ended before its key was saved (fn committed or rolled it back itself, or ignored an error after which the database ended it); what fn wrote may have committed without the key",
		"scope", k.Scope, "key", k.Key, "err", err)
	return fmt.Errorf("%w: key %q: %w", ErrTransactionEnded, k.Key, err)
}

// afterTaken reads the row that made the claim fail, after the rollback.
func (s *TxStore[TTx]) afterTaken(ctx context.Context, u unit[TTx], k dialects.Key) (outcome, dialects.Record, error) {
	rec, ok, err := u.lookup(ctx, k)
	if errors.Is(err, dialects.ErrTransactionEnded) {
		// A claim committed without its record: an earlier call's fn
		// committed its transaction itself and the call could not save
		// the key. What it did is unknown; running fn again could repeat
		// it.
		return done, dialects.Record{}, fmt.Errorf("%w: key %q: %w", ErrTransactionEnded, k.Key, err)
	}
	if err != nil {
		return s.classify(ctx, "read the stored key", err)
	}
	if ok {
		return replay, rec, nil
	}
	// The row expired, or its holder rolled back: clear it and claim. Twins
	// that woke together all come here; a little jitter lets one of them win
	// the next claim cleanly.
	if err := u.deleteExpired(ctx, k); err != nil {
		if ctx.Err() == nil && s.driver.Classify(err) == dialects.LockTimeout {
			// A twin deleted the row first and holds the key again (MariaDB
			// says so at once): wait for it, as for a held key.
			return held, dialects.Record{}, nil
		}
		return s.classify(ctx, "delete the expired key", err)
	}
	if err := sleep(ctx, rand.N(time.Millisecond)); err != nil {
		return done, dialects.Record{}, err
	}
	return again, dialects.Record{}, nil
}

func (s *TxStore[TTx]) classify(ctx context.Context, stage string, err error) (outcome, dialects.Record, error) {
	var none dialects.Record
	if ctx.Err() != nil {
		// The statement failed because ctx ended; say so plainly.
		return done, none, ctx.Err()
	}
	if stage != "" {
		err = fmt.Errorf("%s: %w", stage, err)
	}
	switch s.driver.Classify(err) {
	case dialects.Retry:
		return retry, none, err
	case dialects.Lost:
		// Before COMMIT a broken connection took the whole transaction with
		// it: nothing committed, so the attempt can run again on another.
		return retry, none, fmt.Errorf("idempotency: %w", err)
	case dialects.LockTimeout:
		return done, none, fmt.Errorf("%w (waited %v): %w", ErrInProgress, s.cfg.wait, err)
	case dialects.Busy:
		return busy, none, err
	}
	return done, none, fmt.Errorf("idempotency: %w", err)
}

// pause is how long a call waits before it claims a held key again: 1ms,
// doubling to 32ms, jittered so that twins do not claim in step. A twin
// sees its holder's commit at most that late, and costs the database about
// one short transaction per pause.
func pause(poll int) time.Duration { return jitter(time.Millisecond << min(poll-1, 5)) }

// backoff is the wait before a retry after a conflict: 2ms, 4ms ... 128ms,
// jittered.
func backoff(attempt int) time.Duration { return jitter(time.Millisecond << min(attempt, 7)) }

// jitter draws a wait between half of ceiling and ceiling: never zero, and
// never the same for callers that started together.
func jitter(ceiling time.Duration) time.Duration { return ceiling/2 + rand.N(ceiling/2+1) }

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

// unit is the transaction an attempt runs in: Do begins and ends its own
// through the driver; DoTx runs each attempt under a savepoint of the
// caller's transaction.
type unit[TTx any] interface {
	// begin starts the attempt and claims the key; unless it returns
	// Claimed and no error, the attempt's transaction has already ended.
	begin(ctx context.Context, k dialects.Key, fp []byte, ttl time.Duration) (TTx, dialects.Claim, dialects.Record, error)
	// commit saves rec and ends the attempt's transaction, keeping its
	// writes; its errors are those of dialects.Driver.Commit.
	commit(ctx context.Context, tx TTx, k dialects.Key, rec dialects.Record, ttl time.Duration) error
	rollback(tx TTx)
	joined() bool
	// lookup reads a stored row after a failed claim; deleteExpired
	// removes it if it has expired.
	lookup(ctx context.Context, k dialects.Key) (dialects.Record, bool, error)
	deleteExpired(ctx context.Context, k dialects.Key) error
}

type ownTx[TTx any] struct{ d dialects.Driver[TTx] }

func (o ownTx[TTx]) begin(ctx context.Context, k dialects.Key, fp []byte, ttl time.Duration) (TTx, dialects.Claim, dialects.Record, error) {
	return o.d.Begin(ctx, k, fp, ttl)
}

func (o ownTx[TTx]) commit(ctx context.Context, tx TTx, k dialects.Key, rec dialects.Record, ttl time.Duration) error {
	return o.d.Commit(ctx, tx, k, rec, ttl)
}

func (o ownTx[TTx]) rollback(tx TTx) { o.d.Rollback(tx) }

func (o ownTx[TTx]) joined() bool { return false }

func (o ownTx[TTx]) lookup(ctx context.Context, k dialects.Key) (dialects.Record, bool, error) {
	return o.d.Lookup(ctx, k)
}

func (o ownTx[TTx]) deleteExpired(ctx context.Context, k dialects.Key) error {
	return o.d.DeleteExpired(ctx, k)
}

var savepointSeq atomic.Uint64

type savepoint[TTx any] struct {
	d    dialects.Driver[TTx]
	tx   TTx
	ctx  context.Context
	name string
}

func (p *savepoint[TTx]) begin(ctx context.Context, k dialects.Key, fp []byte, ttl time.Duration) (TTx, dialects.Claim, dialects.Record, error) {
	var none TTx
	// Unique names: MySQL drops an older savepoint of the same name, which
	// would break a DoTx nested in another's fn.
	p.name = "idempotency_" + strconv.FormatUint(savepointSeq.Add(1), 10)
	p.ctx = context.WithoutCancel(ctx)
	if err := p.d.Savepoint(ctx, p.tx, p.name); err != nil {
		return none, 0, dialects.Record{}, fmt.Errorf("savepoint: %w", err)
	}
	c, rec, err := p.d.Claim(ctx, p.tx, k, fp, ttl)
	if err != nil || c != dialects.Claimed {
		p.rollback(p.tx)
		if err != nil {
			err = fmt.Errorf("claim the key: %w", err)
		}
		return none, c, rec, err
	}
	return p.tx, dialects.Claimed, rec, nil
}

func (p *savepoint[TTx]) commit(ctx context.Context, tx TTx, k dialects.Key, rec dialects.Record, ttl time.Duration) error {
	ok, err := p.d.Save(ctx, tx, k, rec, ttl)
	if err != nil || !ok {
		p.rollback(tx)
		if err == nil {
			return dialects.ErrConflict
		}
		return err
	}
	if err := p.d.Release(p.ctx, tx, p.name); err != nil {
		return fmt.Errorf("release the savepoint: %w", err)
	}
	return nil
}

func (p *savepoint[TTx]) rollback(tx TTx) {
	_ = p.d.RollbackTo(p.ctx, tx, p.name)
}

func (p *savepoint[TTx]) joined() bool { return true }

// lookup reads in the caller's transaction first (it sees its own keys),
// then outside it (where a twin's commit after its snapshot shows), unless
// the caller's transaction already sees the latest state (OneWriter), and
// another connection would wait for its write lock.
func (p *savepoint[TTx]) lookup(ctx context.Context, k dialects.Key) (dialects.Record, bool, error) {
	rec, ok, err := p.d.LookupTx(ctx, p.tx, k)
	if err != nil || ok {
		return rec, ok, err
	}
	if o, one := p.d.(dialects.OneWriter); one && o.OneWriter() {
		return rec, false, nil
	}
	return p.d.Lookup(ctx, k)
}

// deleteExpired removes an expired row in the caller's transaction, which
// may hold the database's only write lock (SQLite) or locks of its own on
// the row, that a delete on another connection would wait for.
func (p *savepoint[TTx]) deleteExpired(ctx context.Context, k dialects.Key) error {
	return p.d.DeleteExpiredTx(ctx, p.tx, k)
}
