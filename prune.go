package idempotency

import (
	"context"
	"fmt"
	"time"
)

// Prune deletes expired keys in batches (WithPruneBatch) and returns how
// many it deleted. Each batch is its own short statement, so live calls are
// never stalled behind a long delete; on Postgres a batch skips rows that
// are locked. Many instances may prune at once.
func (s *Store) Prune(ctx context.Context) (total int64, err error) {
	start := time.Now()
	batches := 0
	if h := s.cfg.hooks.Pruned; h != nil {
		defer func() {
			h(ctx, PruneEvent{Rows: total, Batches: batches, Duration: time.Since(start), Err: err})
		}()
	}
	for {
		batches++
		began := time.Now()
		n, err := s.dialect.Prune(ctx, s.db, s.cfg.pruneBatch)
		total += n
		if err != nil {
			return total, fmt.Errorf("idempotency: prune batch %d (after %d rows): %w", batches, total, err)
		}
		s.cfg.logger.DebugContext(ctx, "idempotency: pruned a batch", "batch", batches, "rows", n, "duration", time.Since(began))
		if n < int64(s.cfg.pruneBatch) {
			return total, nil
		}
	}
}
