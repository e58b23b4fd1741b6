package mysql

import (
	"context"
	"errors"

	"github.com/exactlyonce/idempotency/dialects"
)

// PacketLimit is the save's check of a value's size against the server's
// max_allowed_packet, for the tests.
type PacketLimit = packetLimit

// Fits is fits.
func (p *PacketLimit) Fits(ctx context.Context, q dialects.Querier, n int) error {
	return p.fits(ctx, q, n)
}

// PacketTooLarge reports whether err is the check's refusal.
func PacketTooLarge(err error) bool {
	var big *packetTooLargeError
	return errors.As(err, &big)
}
