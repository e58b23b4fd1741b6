package idempotency

import (
	"context"
	"fmt"
	"time"
)

// Prune deletes expired keys in batches (WithPruneBatch, 5000 rows) and
// returns how many it deleted. Each batch is its own short statement, with
// a pause between batches (WithPrunePause, 50ms), so live calls are never
// stalled behind a long delete; on Postgres a batch skips rows that are
// locked. Many instances may prune at once. RunPruner does this on a
// schedule. The hooks hear of every batch (PruneBatch) and of the whole
// (Pruned).
func (s *TxStore[TTx]) Prune(ctx context.Context) (int64, error) {
	total, _, _, err := s.prunePaced(ctx, s.cfg.prune.pause)
	return total, err
}

// prunePaced deletes expired keys batch by batch, pausing between batches,
// and reports to the Pruned hook.
func (s *TxStore[TTx]) prunePaced(ctx context.Context, pause time.Duration) (total int64, batches int, d time.Duration, err error) {
	start := time.Now()
	defer func() {
		d = time.Since(start)
		if h := s.cfg.hooks.Pruned; h != nil {
			h(ctx, PruneEvent{Rows: total, Batches: batches, Duration: d, Err: err})
		}
	}()
	for {
		batches++
		began := time.Now()
		n, err := s.driver.Prune(ctx, s.cfg.pruneBatch)
		total += n
		if err != nil {
			return total, batches, 0, fmt.Errorf("idempotency: prune batch %d (after %d rows): %w", batches, total, err)
		}
		took := time.Since(began)
		s.cfg.logger.DebugContext(ctx, "idempotency: pruned a batch", "batch", batches, "rows", n, "duration", took)
		if h := s.cfg.hooks.PruneBatch; h != nil {
			h(ctx, PruneBatchEvent{Batch: batches, Rows: n, Total: total, Duration: took})
		}
		if n < int64(s.cfg.pruneBatch) {
			return total, batches, 0, nil
		}
		if pause > 0 {
			select {
			case <-ctx.Done():
				return total, batches, 0, ctx.Err()
			case <-time.After(pause):
			}
		}
	}
}
