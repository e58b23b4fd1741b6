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
func (s *Store) Prune(ctx context.Context) (int64, error) {
	var total int64
	for batch := 1; ; batch++ {
		start := time.Now()
		n, err := s.dialect.Prune(ctx, s.db, s.cfg.pruneBatch)
		total += n
		if err != nil {
			return total, fmt.Errorf("idempotency: prune batch %d (after %d rows): %w", batch, total, err)
		}
		s.cfg.logger.DebugContext(ctx, "idempotency: pruned a batch", "batch", batch, "rows", n, "duration", time.Since(start))
		if n < int64(s.cfg.pruneBatch) {
			return total, nil
		}
	}
}
