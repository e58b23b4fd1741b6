package mysql

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/exactlyonce/idempotency/dialects"
)

// packetTooLargeError is the save's error for a value that the server's
// max_allowed_packet does not let one statement carry. Nothing was sent:
// the server would answer such a statement with 1153 and close the
// connection, or reset it while the value is still being written, which
// looks like any lost connection and would run fn again, with the same
// result, until the retries ran out.
type packetTooLargeError struct {
	Size  int // the encoded value, in bytes
	Limit int // the session's max_allowed_packet
}

func (e *packetTooLargeError) Error() string {
	return fmt.Sprintf("the value to store is %d bytes, over what the server's max_allowed_packet (%d bytes) lets the save carry: nothing was stored, and a retry would fail the same way; raise max_allowed_packet (SET GLOBAL, then new connections), or return less from fn (a reference to data stored elsewhere)",
		e.Size, e.Limit)
}

// packetLimit knows the server's max_allowed_packet, to refuse a value the
// server would refuse. Only values of checkFrom bytes or more are checked:
// servers allow 16 MiB (MariaDB), 64 MiB (MySQL 8, TiDB) or at least 1 MiB
// (older MySQL) unless configured lower. The limit is read in the saving
// transaction, once, and again when a value seems too large, in case the
// server's limit has been raised since (a session sees the global value of
// when it connected).
type packetLimit struct {
	bytes atomic.Int64 // the session's max_allowed_packet last read; 0 before
}

const (
	checkFrom = 64 << 10
	// packetSlack is what the save statement's other parameters, and the
	// protocol's headers, may take of a packet: a value within it of the
	// limit is refused, though the server might just accept it.
	packetSlack = 1 << 10
)

// fits returns a *packetTooLargeError when a value of n bytes cannot be
// saved in q's session, or an error reading the limit.
func (p *packetLimit) fits(ctx context.Context, q dialects.Querier, n int) error {
	if n < checkFrom {
		return nil
	}
	if limit := p.bytes.Load(); limit != 0 && int64(n)+packetSlack <= limit {
		return nil
	}
	var limit int64
	if err := q.QueryRowxContext(ctx, `SELECT @@max_allowed_packet`).Scan(&limit); err != nil {
		return fmt.Errorf("read max_allowed_packet: %w", err)
	}
	p.bytes.Store(limit)
	if int64(n)+packetSlack > limit {
		return &packetTooLargeError{Size: n, Limit: int(limit)}
	}
	return nil
}
