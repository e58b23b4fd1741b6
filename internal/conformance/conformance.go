// Package conformance is the one behaviour suite every driver of the
// idempotency engine passes: the sqlx store on each database/sql driver
// (SQLite, lib/pq, pgx stdlib, MySQL or MariaDB) and the pgx store. It
// tests the semantics of Do as the design states them, through the public
// API only, against a real database: a fresh call then its replay, params
// that differ, fn's errors, panics and cancellations, final failures,
// expiry by the database clock, bad input, scopes, twins at every isolation
// level, a winner that rolls back, the wait bound, storms, DoTx, lost
// connections, pruning and hooks.
//
// A driver's package runs it from a test with a Harness that says how to
// get a database of its own and reach it through the driver's client:
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, conformance.Harness[pgx.Tx]{Name: "pgx", Kind: "postgres", Open: openEnv})
//	}
//
// SQL is the harness of the database/sql drivers.
package conformance

import (
	"context"
	"slices"
	"testing"

	"github.com/exactlyonce/idempotency"
)

// Harness is one driver under test.
type Harness[TTx any] struct {
	// Name names the driver in the subtests: "postgres", "pgx", ...
	Name string
	// Kind is the database: "postgres", "mysql" or "sqlite". It picks the
	// isolation levels the twins run at and the tests that only make
	// sense on one database (a deadlock that InnoDB ends, SQLite's one
	// writer).
	Kind string
	// Optimistic says that transactions take no lock before COMMIT
	// (TiDB's optimistic mode): a twin cannot see a holder that is still
	// running, so it does not wait; each twin may run fn, the first to
	// commit wins, and the others' COMMIT fails and they replay it. The
	// tests of waiting are replaced by one of that meeting.
	Optimistic bool
	// Open returns a fresh database for this test (or benchmark) alone:
	// migrated, with the charges table (testdb.Charges) and nothing in
	// either table, closed and dropped at t's cleanup.
	Open func(t testing.TB) Env[TTx]
}

// Env is an open database as the driver's client reaches it. The suite
// writes its SQL for the Kind's database; statements that take arguments
// go through Charge, which knows the driver's placeholders.
type Env[TTx any] interface {
	// NewStore returns a store on the database with opts; it fails t if
	// the store cannot be made.
	NewStore(t testing.TB, opts ...idempotency.Option) *idempotency.TxStore[TTx]

	// Charge is the business write of the tests' fn: it inserts the row
	// (ref, amount) into charges through tx.
	Charge(ctx context.Context, tx TTx, ref string, amount int) error

	// ExecTx runs a statement without arguments through tx and returns
	// its error, as a fn that writes something else would.
	ExecTx(ctx context.Context, tx TTx, query string) error

	// Exec runs a statement without arguments outside any transaction
	// (setup: CREATE TABLE), and fails t if it fails.
	Exec(t testing.TB, query string)

	// Count runs a query that returns one integer, outside any
	// transaction, and fails t if it fails.
	Count(t testing.TB, query string) int

	// Begin begins a transaction of the caller's, for DoTx; Commit and
	// Rollback end it.
	Begin(ctx context.Context) (TTx, error)
	Commit(ctx context.Context, tx TTx) error
	Rollback(ctx context.Context, tx TTx) error

	// Hold takes a connection out of the pool until release is called.
	Hold(ctx context.Context) (release func(), err error)

	// Reopen returns an Env on the same database through a new pool of
	// its own, set up as p says, and closed at t's cleanup.
	Reopen(t testing.TB, p Pool) Env[TTx]

	// Server returns the host:port of the database server, or "" for an
	// embedded database (SQLite), which has no connection to lose.
	Server() string
}

// Pool is how Env.Reopen sets up its pool.
type Pool struct {
	// MaxConns bounds the pool's open connections; 0 keeps the
	// driver's default.
	MaxConns int
	// Addr, if set, is the host:port to connect to instead of the
	// server's: a proxy that forwards to Server().
	Addr string
}

// test is one behaviour of the suite.
type test[TTx any] struct {
	name string
	// serial tests run one at a time: they time waits and expiries, or
	// load the server, and would be flaky beside others.
	serial bool
	// kinds, if set, are the databases the test makes sense on; why says
	// why not on the others.
	kinds []string
	why   string
	// locks: the test needs a twin to see a holder that has not committed
	// (the claim's lock); it does not run on optimistic harnesses.
	locks bool
	// optimistic: the test runs only on optimistic harnesses.
	optimistic bool
	run        func(t *testing.T, s *suite[TTx])
}

func tests[TTx any]() []test[TTx] {
	return []test[TTx]{
		// calls.go
		{name: "FreshThenReplay", run: testFreshThenReplay[TTx]},
		{name: "ParamsMismatch", run: testParamsMismatch[TTx]},
		{name: "FnErrorStoresNothing", run: testFnErrorStoresNothing[TTx]},
		{name: "PanicRollsBack", run: testPanicRollsBack[TTx]},
		{name: "CancelledContext", run: testCancelledContext[TTx]},
		{name: "FinalFailureIsRemembered", run: testFinalFailureIsRemembered[TTx]},
		{name: "ExpiredKeyRunsAgain", serial: true, run: testExpiredKeyRunsAgain[TTx]},
		{name: "TTLCountsFromCommit", serial: true, run: testTTLCountsFromCommit[TTx]},
		{name: "BadInputWritesNothing", run: testBadInputWritesNothing[TTx]},
		{name: "ScopesAreIsolated", run: testScopesAreIsolated[TTx]},
		{name: "ValueThatDoesNotDecode", run: testValueThatDoesNotDecode[TTx]},

		// codec.go
		{name: "CodecCarriesBytes", run: testCodecCarriesBytes[TTx]},
		{name: "CodecPerCall", run: testCodecPerCall[TTx]},
		{name: "CodecThatCannotDecode", run: testCodecThatCannotDecode[TTx]},
		{name: "FinalFailureCarriesPayload", run: testFinalFailureCarriesPayload[TTx]},
		{name: "ReadFirst", serial: true, run: testReadFirst[TTx]},
		{name: "DefaultReadFirst", kinds: []string{"mysql", "sqlite"},
			why:   "Postgres claims first by default, and its claim reads a committed key without waiting for its row",
			locks: true,
			run:   testDefaultReadFirst[TTx]},

		// twins.go
		{name: "TwinsRunOnce", serial: true, run: testTwinsRunOnce[TTx]},
		{name: "WinnerRollsBack", serial: true, run: testWinnerRollsBack[TTx]},
		{name: "WaitBound", serial: true, locks: true, run: testWaitBound[TTx]},
		{name: "LongWait", serial: true, locks: true, run: testLongWait[TTx]},
		{name: "TwinsMeetAtCommit", serial: true, optimistic: true, run: testTwinsMeetAtCommit[TTx]},
		{name: "Storm", serial: true, run: testStorm[TTx]},
		{name: "WaitingTwinsLeaveThePool", serial: true, locks: true, kinds: []string{"postgres", "mysql"},
			why: "SQLite has one writer at a time: a call on another key waits for the holder's write lock whatever the pool",
			run: testWaitingTwinsLeaveThePool[TTx]},
		{name: "QueuedCallObeysContext", serial: true, run: testQueuedCallObeysContext[TTx]},
		{name: "QueuedCallObeysContextOnSQLiteLock", serial: true, kinds: []string{"sqlite"},
			why: "the write lock is SQLite's", run: testQueuedCallObeysContextOnSQLiteLock[TTx]},
		{name: "LostConnectionsAreRetried", serial: true, kinds: []string{"postgres", "mysql"},
			why: "an embedded database has no connection to lose", run: testLostConnectionsAreRetried[TTx]},

		// tx.go
		{name: "DoTx", run: testDoTx[TTx]},
		{name: "TransactionEndedUnderFn", run: testTransactionEndedUnderFn[TTx]},
		{name: "FnEndsTransaction", run: testFnEndsTransaction[TTx]},
		{name: "DoTxExpiredKey", serial: true, run: testDoTxExpiredKey[TTx]},
		{name: "InTxAbortedTransaction", kinds: []string{"postgres"},
			why: "only Postgres aborts a transaction on an error and keeps it open", run: testInTxAbortedTransaction[TTx]},
		{name: "SwallowedDeadlockInFn", serial: true, locks: true, kinds: []string{"mysql"},
			why: "InnoDB ends a transaction on a deadlock; Postgres aborts it, and SQLite has one writer",
			run: testSwallowedDeadlockInFn[TTx]},

		// prune.go
		{name: "Prune", serial: true, run: testPrune[TTx]},
		{name: "PrunePartitionedTable", serial: true, kinds: []string{"postgres"},
			why: "hash partitions and ctids are Postgres's", run: testPrunePartitionedTable[TTx]},
		{name: "RunPruner", serial: true, run: testRunPruner[TTx]},
		{name: "RunPrunerStopsWhileWaiting", run: testRunPrunerStopsWhileWaiting[TTx]},
		{name: "Hooks", serial: true, run: testHooks[TTx]},
		{name: "CallEndSeesPanic", run: testCallEndSeesPanic[TTx]},

		// flows.go
		{name: "FlowFreshThenReplay", run: testFlowFreshThenReplay[TTx]},
		{name: "FlowResumesAfterError", run: testFlowResumesAfterError[TTx]},
		{name: "FlowFinalIsStored", run: testFlowFinalIsStored[TTx]},
		{name: "FlowParamsMismatch", run: testFlowParamsMismatch[TTx]},
		{name: "FlowStepOrder", run: testFlowStepOrder[TTx]},
		{name: "FlowTwinWaitsThenReplays", serial: true, run: testFlowTwinWaitsThenReplays[TTx]},
		{name: "FlowTwinsStorm", serial: true, run: testFlowTwinsStorm[TTx]},
		{name: "FlowTwinDuringStep", run: testFlowTwinDuringStep[TTx]},
		{name: "FlowAtEveryIsolation", run: testFlowAtEveryIsolation[TTx]},
		{name: "FlowStepEndedUnderFn", run: testFlowStepEndedUnderFn[TTx]},
		{name: "FlowFirstStepFails", run: testFlowFirstStepFails[TTx]},
		{name: "FlowStepRetriesConflicts", kinds: []string{"postgres"},
			why: "Postgres raises a serialization failure on demand (RAISE ... USING ERRCODE)", run: testFlowStepRetriesConflicts[TTx]},
		{name: "FlowTakeoverFencesStaleOwner", serial: true, run: testFlowTakeoverFencesStaleOwner[TTx]},
		{name: "FlowCompleterFinishesAbandoned", serial: true, run: testFlowCompleterFinishesAbandoned[TTx]},
		{name: "FlowCompletersResumeEachOnce", serial: true, run: testFlowCompletersResumeEachOnce[TTx]},
		{name: "FlowCompleterGivesUp", serial: true, run: testFlowCompleterGivesUp[TTx]},
	}
}

// Run runs the suite against h, as a subtest named h.Name that runs in
// parallel with the caller's other parallel tests. Each behaviour gets a
// database of its own from h.Open. Those that time waits and expiries, or
// load the server, run one after another; the others run in parallel.
func Run[TTx any](t *testing.T, h Harness[TTx]) {
	t.Helper()
	if h.Name == "" || h.Open == nil || !slices.Contains([]string{"postgres", "mysql", "sqlite"}, h.Kind) {
		t.Fatalf("conformance.Run: the harness needs a Name, an Open function and a Kind of postgres, mysql or sqlite; got %q, %q", h.Name, h.Kind)
	}
	t.Run(h.Name, func(t *testing.T) {
		t.Parallel()
		for _, tc := range tests[TTx]() {
			t.Run(tc.name, func(t *testing.T) {
				switch {
				case tc.kinds != nil && !slices.Contains(tc.kinds, h.Kind):
					t.Skip(tc.why)
				case tc.locks && h.Optimistic:
					t.Skip("optimistic transactions lock nothing before COMMIT: twins do not wait for (or deadlock with) each other, they meet at COMMIT (TwinsMeetAtCommit)")
				case tc.optimistic && !h.Optimistic:
					t.Skip("a test of optimistic transactions; here twins wait for each other (WaitBound)")
				}
				if !tc.serial {
					t.Parallel()
				}
				tc.run(t, &suite[TTx]{kind: h.Kind, optimistic: h.Optimistic, env: h.Open(t)})
			})
		}
	})
}
