package dialects

import (
	"context"
	"errors"
	"strings"
	"time"
)

// FlowDriver is what flows (idempotency.NewFlow) need from a driver, beside
// Driver: a flow's row (who owns it, under which fencing token, until
// when), its recorded steps, and the transaction that ends it by writing
// the key's record. The engine finds it on a Driver by a type assertion;
// the database/sql driver (SQL) and the pgx store implement it.
//
// Every lease is counted by the database's clock. A step's transaction
// begins with the fence (BeginStep), which extends the lease only while
// the row still carries the caller's token and holds the row's lock until
// the transaction ends, so that no takeover can happen while a step runs
// and a stale owner commits nothing.
type FlowDriver[TTx any] interface {
	// InsertFlow inserts the flow's row with token 1 and a lease from now,
	// unless a row holds the key; it reports whether it inserted.
	InsertFlow(ctx context.Context, k Key, f FlowRow, lease time.Duration) (bool, error)

	// ReadFlow reads the key's flow row, if there is one.
	ReadFlow(ctx context.Context, k Key) (FlowRow, bool, error)

	// TakeOverFlow moves the row from token to token+1 with a new lease,
	// if it still carries token, its lease has expired and no transaction
	// holds it (a step under way); it reports whether it did. Of many
	// callers with the same token, one at most succeeds.
	TakeOverFlow(ctx context.Context, k Key, token int64, lease time.Duration) (bool, error)

	// FlowSteps reads the flow's recorded steps, in order.
	FlowSteps(ctx context.Context, k Key) ([]StepRow, error)

	// BeginStep begins a transaction and fences it: it extends the lease
	// of the row that carries f.Token, marks the row with f.Mark, and
	// locks it. When no row carries the token (another owner took the
	// flow over, or it finished), it rolls back and reports false.
	BeginStep(ctx context.Context, k Key, f Fence, lease time.Duration) (TTx, bool, error)

	// RecordStep extends the lease again where the row still carries f's
	// mark, records steps (none, one or more, in order) in tx (a
	// transaction of BeginStep's), and commits. It always ends tx. A row without the mark means that tx is
	// no longer the transaction BeginStep fenced (the database, or fn,
	// ended it): nothing is recorded, and the error wraps
	// ErrTransactionEnded. A failed COMMIT is a *CommitError.
	RecordStep(ctx context.Context, tx TTx, k Key, f Fence, steps []StepRow, lease time.Duration) error

	// FinishFlow checks f's mark as RecordStep does, writes rec as the
	// key's record (expiring ttl from now), deletes the flow's steps and
	// row, and commits tx (a transaction of BeginStep's). It always ends
	// tx. A failed COMMIT is a *CommitError.
	FinishFlow(ctx context.Context, tx TTx, k Key, f Fence, rec Record, ttl time.Duration) error

	// ReleaseFlow ends the lease of the row that carries token now, and
	// notes why the run stopped, so that a retry or a completer may take
	// it over at once.
	ReleaseFlow(ctx context.Context, k Key, token int64, reason string) error

	// DropFlow deletes the row that carries token and its steps.
	DropFlow(ctx context.Context, k Key, token int64) error

	// ExpiredFlows lists up to limit rows of the flow named flow whose
	// lease has expired, longest expired first.
	ExpiredFlows(ctx context.Context, flow string, limit int) ([]FlowRow, error)
}

// StepFinisher is implemented by a FlowDriver that lets the engine end a
// flow in the transaction of its last step: a step's transaction is left
// open after its fn returned, and commits with its record (RecordStep)
// when the flow goes on, or stores the flow's value (FinishFlow) when the
// flow ends, which spares a transaction and its commit per flow. A
// deadlock or serialization failure at that end runs the last step again.
// FinishInStep reports whether the driver's database may do so.
type StepFinisher interface {
	FinishInStep() bool
}

// FlowBeginner is implemented by a FlowDriver that begins a new flow in
// the transaction of its first step (the pgx store): one exchange reads
// the key's record and its flow's row and, where there is neither, inserts
// the row, fenced, in a transaction it leaves open for the first step. A
// flow then costs no transaction of its own to start, and its row commits
// with its first step, or not at all; until then, callers with the same
// key find it Held (a lock its transaction holds) and wait, holding no
// connection.
type FlowBeginner[TTx any] interface {
	// BeginFlow reads the key's live record and its flow row and, where
	// there is neither, begins a transaction, takes the key's lock without
	// waiting, inserts row with token 1 and f's mark, and leaves the
	// transaction open (Started), so that it runs the first step (or
	// commits through RecordStep before a Call). Without Started, nothing
	// stays open.
	BeginFlow(ctx context.Context, k Key, row FlowRow, lease time.Duration, f Fence) (TTx, FlowStart, error)
	// UndoStep rolls back what fn wrote in a transaction of BeginFlow's
	// (after a failed first step), keeping the flow's row in it.
	UndoStep(ctx context.Context, tx TTx) error
}

// FlowStart is what BeginFlow found.
type FlowStart struct {
	Record   Record // the key's live record, if Recorded
	Recorded bool
	Row      FlowRow // the key's flow row, if Running
	Running  bool
	// Started: neither was there, and the transaction BeginFlow left open
	// holds the new row.
	Started bool
	// Held: neither was there, and another caller's transaction holds the
	// key's lock: it is starting the flow (or running Do with the key).
	Held bool
}

// Fence is what a step's transaction writes on its flow's row: the
// owner's fencing token, and a mark the engine draws for the transaction.
// The mark tells the transaction's later statements whether they still run
// in it: where the database ended it under fn (MySQL on a deadlock fn
// ignored), the mark is gone with it, and nothing more is recorded.
type Fence struct {
	Token int64
	Mark  int64
}

// FlowRow is a flow's row.
type FlowRow struct {
	Scope, Key  string
	Flow        string // the flow's name
	Fingerprint []byte // of the flow's name and params
	Params      []byte // JSON
	Token       int64  // fencing token: 1 at the start, one more per takeover
	Resumes     int    // takeovers so far
	LastError   string // why the last run stopped, if it did
	Expired     bool   // the lease has run out (ReadFlow)
	Overdue     time.Duration
}

// StepRow is a recorded step of a flow.
type StepRow struct {
	Seq   int
	Name  string
	Value []byte // JSON
}

// ErrNoFlows is what a database/sql driver's flow methods wrap when its
// dialect has no flow statements (it does not implement FlowDialect).
var ErrNoFlows = errors.New("the dialect has no statements for flows (it does not implement dialects.FlowDialect)")

// FlowDialect is implemented by dialects that run flows on database/sql:
// their statements for the flow tables of their key table.
type FlowDialect interface {
	FlowStatements() FlowStatements
}

// FlowStatements are one database's statements for flows, for the tables
// that go with one key table (FlowTables). Arguments come in the order
// each statement lists; a lease or a TTL is an integer count of LeaseUnit.
type FlowStatements struct {
	// LeaseUnit is the unit of the lease and TTL arguments: a microsecond
	// or a millisecond.
	LeaseUnit time.Duration
	// Insert (scope, key, flow, fingerprint, params, lease) inserts the row
	// with token 1 unless one holds the key: one row affected, or none.
	Insert string
	// Read (scope, key): flow, fingerprint, params, token, resumes,
	// last error (never NULL), and whether the lease has expired.
	Read string
	// Lock (scope, key, token) returns a row when the flow carries token,
	// its lease has expired and no transaction holds its row, and locks
	// it; "" when TakeOver alone is enough (SQLite's one writer).
	Lock string
	// TakeOver (lease, scope, key, token) moves the token on by one,
	// counts a resume and sets a new lease, where the lease has expired.
	TakeOver string
	// Fence (lease, mark, scope, key, token) extends the lease of the row
	// that carries token and marks it: one row affected, or none when
	// another owner has it.
	Fence string
	// Touch (lease, scope, key, token, mark) extends the lease of the row
	// that carries token and mark: one row affected, or none.
	Touch string
	// The statements for clients that pipeline (pgx), where they differ
	// from the others: the mark is the transaction's, not the row's, and
	// a check fails with a division by zero rather than affecting no row
	// (an error, unlike a row count, stops the statements sent after it).
	// "" where the dialect has none.
	//
	// LockFence (scope, key, token, mark) locks the row that carries token
	// and marks the transaction: one row, or none when another owner has
	// the flow.
	LockFence string
	// RecordOrFail (lease, scope, key, token, mark, seqs, names, values)
	// records the steps given as three arrays, and extends the lease when
	// less than half of it is left, in a transaction that carries the
	// mark; it fails in one that does not.
	RecordOrFail string
	// FinishOrFail (scope, key, token, mark, fingerprint, value, failed,
	// ttl) deletes the row that carries token and the flow's steps, and
	// inserts the key's record, in a transaction that carries the mark;
	// it fails in one that does not (DeleteExpiredKey goes first).
	FinishOrFail string
	// Begin (scope, key, lock, flow, fingerprint, params, lease, mark)
	// reads the key's live record and its flow's row and, where there is
	// neither and the key's lock (lock) comes free without waiting, inserts
	// the row with token 1 and mark as its fence; it answers started,
	// locked (NULL when there was a record or a row), the record's
	// fingerprint, value and failed (NULL without one), and the row's
	// columns as Read answers them (NULL without one). For drivers that
	// implement FlowBeginner; "" if the dialect has none.
	Begin string
	// Steps (scope, key): seq, name, value, by seq.
	Steps string
	// Record (scope, key, seq, name, value) inserts a step.
	Record string
	// Release (reason, scope, key, token) ends the lease now.
	Release string
	// DeleteExpiredKey (scope, key) removes the key's expired record.
	DeleteExpiredKey string
	// InsertKey (scope, key, fingerprint, value, failed, ttl) inserts the
	// key's record.
	InsertKey string
	// DeleteSteps (scope, key) deletes the flow's steps.
	DeleteSteps string
	// DeleteFlow (scope, key, token) deletes the row that carries token.
	DeleteFlow string
	// Stats: how many flows there are, and how many of them have a lease
	// that ran out (stopped or abandoned, waiting for a retry or a
	// completer).
	Stats string
	// FinishApart: a flow's value is stored in a transaction of its own
	// rather than in its last step's (StepFinisher), where storing it
	// meets deadlocks between flows that end at once (InnoDB's gap locks)
	// and would run the last step again.
	FinishApart bool
	// Expired (flow, limit): scope, key, fingerprint, params, token,
	// resumes, last error (never NULL), and milliseconds since the lease
	// ran out, longest first.
	Expired string
}

// FlowTables names the tables of flows that go with a key table: for
// idempotency_keys (and schema.idempotency_keys), idempotency_flows and
// idempotency_steps; for any other name, the name with _flows and _steps
// appended. The migrations create the default ones.
func FlowTables(table string) (flows, steps string) {
	base, ok := strings.CutSuffix(table, "_keys")
	if !ok {
		base = table
	}
	return base + "_flows", base + "_steps"
}
