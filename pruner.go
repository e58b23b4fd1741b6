package idempotency

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"
)

// PrunerOption is the Option type, under the name RunPruner's options had
// before they became store options.
type PrunerOption = Option

// WithPruneInterval sets how often RunPruner prunes; the default is 5
// minutes. Each wait is drawn at random around it (see WithPruneJitter), so
// instances started together do not prune in lockstep.
func WithPruneInterval(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Millisecond {
			return fmt.Errorf("idempotency: WithPruneInterval(%v): the interval must be at least 1ms", d)
		}
		c.prune.interval = d
		return nil
	}
}

// WithPruneJitter sets how far each of RunPruner's waits may stray from the
// interval, as a fraction of it: 0.2 (the default) waits between 0.8 and
// 1.2 intervals. 0 means no jitter; the fraction must be below 1.
func WithPruneJitter(fraction float64) Option {
	return func(c *config) error {
		if !(fraction >= 0 && fraction < 1) { // also rejects NaN
			return fmt.Errorf("idempotency: WithPruneJitter(%v): want a fraction from 0 up to (not including) 1", fraction)
		}
		c.prune.jitter = fraction
		return nil
	}
}

// WithPrunePause sets RunPruner's pause between the batches of one run; the
// default is 50ms. Deleting a large backlog without a pause halved
// MariaDB's throughput and doubled Postgres's p99 latency for live calls in
// internal/prunebench; with 50ms both stayed near their baselines. 0
// deletes as fast as the database allows.
func WithPrunePause(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("idempotency: WithPrunePause(%v): the pause must not be negative", d)
		}
		c.prune.pause = d
		return nil
	}
}

// WithPruneAtStart makes RunPruner prune once at once instead of waiting an
// interval first. It is off by default so that a fleet restarted together
// does not prune together.
func WithPruneAtStart() Option {
	return func(c *config) error {
		c.prune.atStart = true
		return nil
	}
}

// PruneEvery is WithPruneInterval.
//
// Deprecated: use WithPruneInterval.
func PruneEvery(d time.Duration) Option { return WithPruneInterval(d) }

// PruneJitter is WithPruneJitter.
//
// Deprecated: use WithPruneJitter.
func PruneJitter(fraction float64) Option { return WithPruneJitter(fraction) }

// PrunePause is WithPrunePause.
//
// Deprecated: use WithPrunePause.
func PrunePause(d time.Duration) Option { return WithPrunePause(d) }

// PruneAtStart is WithPruneAtStart.
//
// Deprecated: use WithPruneAtStart.
func PruneAtStart() Option { return WithPruneAtStart() }

// PruneLogger is WithLogger, given to RunPruner.
//
// Deprecated: pass WithLogger to RunPruner (or to New).
func PruneLogger(l *slog.Logger) Option { return WithLogger(l) }

// pruneConfig is RunPruner's part of a store's configuration.
type pruneConfig struct {
	interval time.Duration
	jitter   float64
	pause    time.Duration
	atStart  bool
}

// RunPruner prunes expired keys (see Prune) every interval until ctx is
// done, and then returns nil. It returns an error only for a bad option:
// a failed run is logged and the next one tries again, because a pruner
// that stopped on the first network blip would let the table grow.
//
// Its settings are store options (WithPruneInterval, WithPruneJitter,
// WithPrunePause, WithPruneAtStart, WithLogger), given to New or to
// RunPruner itself, whose options apply over the store's for this pruner
// alone. It logs each run (rows, batches, duration) at Info, and failed
// runs at Warn, through the store's logger, silent unless set.
//
// Run it in a goroutine on every instance; no leader election is needed.
// Each batch is one short DELETE: on Postgres it skips rows locked by a
// live call or another pruner (FOR UPDATE SKIP LOCKED), and on MySQL,
// MariaDB and SQLite concurrent pruners only take turns on the same rows,
// so the worst case of two pruners at once is a batch that finds nothing.
//
//	go func() { _ = store.RunPruner(ctx, idempotency.WithPruneInterval(time.Minute)) }()
func (s *TxStore[TTx]) RunPruner(ctx context.Context, opts ...Option) error {
	cfg := *s.cfg
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&cfg); err != nil {
			return err
		}
	}
	p := *s
	p.cfg = &cfg
	wait := cfg.prune.next()
	if cfg.prune.atStart {
		wait = 0
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for run := 1; ; run++ {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		p.pruneOnce(ctx, run)
		timer.Reset(cfg.prune.next())
	}
}

// pruneOnce runs one prune and logs it.
func (s *TxStore[TTx]) pruneOnce(ctx context.Context, run int) {
	log := s.cfg.logger
	rows, batches, d, err := s.prunePaced(ctx, s.cfg.prune.pause)
	switch {
	case err != nil && ctx.Err() != nil:
		// Stopping: the cancelled statement is not a failure.
		log.InfoContext(ctx, "idempotency: prune stopped", "run", run, "rows", rows, "batches", batches, "duration", d)
	case err != nil:
		log.WarnContext(ctx, "idempotency: prune failed; will try again", "run", run, "rows", rows, "batches", batches, "duration", d, "err", err)
	default:
		log.InfoContext(ctx, "idempotency: pruned", "run", run, "rows", rows, "batches", batches, "duration", d)
	}
}

// next draws the wait before the next run.
func (c pruneConfig) next() time.Duration {
	if c.jitter == 0 {
		return c.interval
	}
	f := 1 + c.jitter*(2*rand.Float64()-1)
	return time.Duration(float64(c.interval) * f)
}
