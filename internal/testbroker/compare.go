package testbroker

import (
	"testing"
	"time"
)

// Compare is the inbox adapters' consume benchmark loop: each round of
// b.Loop times bare and inbox, each a drain of n messages (consumed
// without the inbox, and through it), then reports both rates and their
// ratio inbox/bare as metrics and in the log, after what (the broker, the
// store, the concurrency).
func Compare(b *testing.B, what string, n int, bare, inbox func() time.Duration) {
	b.Helper()
	var bareTime, inboxTime time.Duration
	for round := 0; b.Loop(); round++ {
		// Each goes first every other round: on a shared machine the load
		// moves, and neither should always meet the warmer moment.
		if round%2 == 0 {
			bareTime += bare()
			inboxTime += inbox()
		} else {
			inboxTime += inbox()
			bareTime += bare()
		}
	}
	msgs := float64(n * b.N)
	ratio := bareTime.Seconds() / inboxTime.Seconds()
	b.ReportMetric(msgs/bareTime.Seconds(), "bare-msgs/s")
	b.ReportMetric(msgs/inboxTime.Seconds(), "inbox-msgs/s")
	b.ReportMetric(ratio, "inbox/bare")
	b.Logf("%s: bare %.0f msgs/s, inbox %.0f msgs/s, inbox/bare %.2f",
		what, msgs/bareTime.Seconds(), msgs/inboxTime.Seconds(), ratio)
}
