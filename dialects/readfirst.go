package dialects

// ReadFirst is when a call reads its key with one plain statement before it
// begins a transaction. A read answers a replay alone, without the claim's
// transaction; it costs a fresh call one more statement. Which is cheaper
// depends on the database (how much a failed claim costs against a read)
// and on how many calls replay; a dialect or driver that implements
// ReadFirster picks its default, and idempotency.WithReadFirst overrides
// it.
type ReadFirst int

const (
	// ReadFirstNever: every call claims first; a replay costs the claim's
	// transaction (on Postgres, a cheap one: the claim returns the record).
	ReadFirstNever ReadFirst = iota
	// ReadFirstAlways: every call reads first.
	ReadFirstAlways
	// ReadFirstAdaptive: a call reads first while more than a quarter of
	// the store's recent calls replayed (a wave of retries, a duplicate
	// storm), and claims first otherwise, so that fresh calls pay for no
	// read in ordinary traffic and replays cost one read when they are many.
	ReadFirstAdaptive
)

// ReadFirster is implemented by dialects and drivers that choose when calls
// read first by default. Without it, calls claim first (ReadFirstNever).
type ReadFirster interface {
	ReadFirst() ReadFirst
}
