/*
Package idempotency makes a retried request run its business operation
exactly once, by writing the idempotency key in the same SQL transaction as
the operation, in the application's own database.

Either the operation's writes and its key commit together, or neither does.
A retry after a success replays the stored answer; a retry after a failure
or a crash runs the operation again, because nothing of the first try is
left behind. There is no "in progress" row to clean up and no clock to trust
but the database's.

# Quick start

Create the key table once (see package migrations), then wrap the operation:

	store, err := idempotency.New(db) // db is a *sqlx.DB: postgres, pgx, mysql or sqlite
	if err != nil { ... }

	charge, err := idempotency.Do(ctx, store, key, req,
		func(ctx context.Context, tx *sqlx.Tx) (Charge, error) {
			// Every write goes through tx: it commits with the key.
			return insertCharge(ctx, tx, req)
		})

The first call with a key runs fn and stores its value as JSON (or in the
encoding of another Codec: WithCodec) with a fingerprint of req. Later calls with the key return the stored value without
running fn, or ErrParamsMismatch when req differs. Run does the same and also
reports whether the value was replayed.

# What Do guarantees

  - fn's writes and the key commit in one transaction, or neither does.
  - A twin (a concurrent call with the same key) waits for the running call
    (WithWait), then replays its value, or runs if that call rolled back. Past
    the wait it gets ErrInProgress, and nothing is stored. While it waits it
    holds no transaction and no pooled connection.
  - fn's error rolls everything back and is returned unchanged; a retry runs
    fn again. A FinalError (see Final) is stored and replayed instead: use it
    for answers that must not change on retry, such as a declined card.
  - Serialization failures and deadlocks roll the attempt back and run it
    again, at most WithMaxRetries times.
  - A connection lost under Do's own statements before COMMIT runs the attempt
    again on another connection. A connection lost during COMMIT gives
    ErrOutcomeUnknown; a retry with the same key resolves it.
  - Keys expire WithTTL after their save by the database's clock; Prune
    deletes them.
  - fn must return every error of tx, and must not commit or roll back tx
    itself. Where the database ends a transaction on an error (MySQL on a
    deadlock), an fn that goes on writes outside it; so does one that ends
    tx itself. Do then returns ErrTransactionEnded, which is not safe to
    retry blindly (its doc says what each store detects).

fn may run more than once when an attempt is rolled back (a retry after a
deadlock, a lost race), which is why all its effects must go through tx. A
call to another system inside fn is not undone by a rollback: insert a job
(River's InsertTx) or an outbox row through tx instead, and make the call
after the commit, with a key that is the same on every run of the job:
DownstreamKey derives one from the call (examples/river), or the outbox
row's id serves (examples/outbox).

# Flows: requests that call other systems

When a request must call another system and answer with its result (charge
a card with a provider, then answer 201 or 402), one transaction cannot
hold it. A flow (NewFlow) runs it as steps under one key: each Step is a
transaction whose writes commit with the step's recorded value, and each
Call reaches the other system outside any transaction with a key that is
the same on every run (DownstreamKey), then records its answer. A retry,
or RunCompleter when nobody retries, resumes after the last recorded
step; the flow's value, or its final failure, is stored under the key and
replayed as Do's are. A run owns its key under a lease (WithLease) with a
fencing token that every step checks, so a run paused past its lease
records nothing after another has taken over (ErrFlowTakenOver).

	checkout := idempotency.NewFlow("checkout", func(ctx context.Context, s *idempotency.Steps[*sqlx.Tx], req Request) (Receipt, error) {
		order, err := idempotency.Step(s, "order", insertOrder(req))
		if err != nil {
			return Receipt{}, err
		}
		auth, err := idempotency.Call(s, "authorize", func(ctx context.Context, key string) (Auth, error) {
			return psp.Authorize(ctx, key, order.Amount)
		})
		...
	})
	receipt, err := checkout.Do(ctx, store.Scope(customer), key, req)
	go idempotency.RunCompleter(ctx, store, checkout) // on every instance

# Joining a transaction

DoTx runs the same protocol inside a transaction the caller holds, under a
savepoint, so a service layer's unit of work and the key commit together.

# Databases

PostgreSQL (lib/pq and pgx), MySQL 8 and MariaDB (go-sql-driver/mysql), and
SQLite (modernc.org/sqlite, mattn/go-sqlite3), at the isolation levels each
offers from READ COMMITTED up. How each dialect claims a key is described in
its package under dialects/.

On PostgreSQL with pgx's own API, package pgxstore gives a store whose fn
gets a pgx.Tx (sqlc's Queries.WithTx takes one) and whose fresh call costs
the round trips of a bare transaction. Do, Run, DoTx and RunTx are generic
over the transaction type (TxStore), so the same calls serve both stores.
*/
package idempotency
