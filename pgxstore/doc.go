/*
Package pgxstore is the idempotency store for pgx v5's native API: calls run
fn with a pgx.Tx on a *pgxpool.Pool, so that code written for pgx (sqlc's
queries.WithTx(tx), pgx.Batch, CopyFrom) writes in the same transaction as
the idempotency key.

It is the protocol of package idempotency, with the same semantics, options,
errors and schema as the database/sql store; what differs is the client API
and the round trips.

# Quick start

	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil { ... }
	if err := pgxstore.Up(ctx, pool); err != nil { ... } // once, at start-up
	store, err := pgxstore.New(pool, idempotency.WithTTL(24*time.Hour))
	if err != nil { ... }

	charge, err := idempotency.Do(ctx, store, key, req,
		func(ctx context.Context, tx pgx.Tx) (db.Charge, error) {
			// Every write goes through tx: it commits with the key.
			return db.New(tx).CreateCharge(ctx, arg) // or queries.WithTx(tx)
		})

idempotency.Run, DoTx and RunTx (with a caller's pgx.Tx, from pool.Begin
or another call's fn), Store.Scope, Store.Prune and Store.RunPruner work as
they do on the database/sql store.

# Round trips

The store sends its statements as pgx pipelines (pgx.Batch, one Sync each),
so a fresh call costs what a bare transaction with fn's statements costs:

  - fresh: 3 round trips with one statement in fn: [BEGIN, claim], fn's
    statement, [save, COMMIT];
  - replay: 2: [BEGIN, claim], ROLLBACK; with idempotency.WithReadFirst, 1
    (and a fresh call 4);
  - a twin that waits: 2 per try, holding no connection between tries.

These counts hold on a warm connection in pgx's default query mode, as in
QueryExecModeCacheDescribe, QueryExecModeExec and the simple protocol. The
first call on a new connection prepares the store's statements, one round
trip more per pipeline, once; QueryExecModeDescribeExec pays that on every
pipeline. pgxpool pings a connection that was idle for over a second before
it hands it out.

The claim, at READ COMMITTED (the store's level, or the server's default),
is two plain statements behind BEGIN: one takes the key's advisory lock
without waiting, the next reads the key's row with a snapshot taken after
the lock, so a twin that committed just before it came free is seen and
replayed. At REPEATABLE READ or SERIALIZABLE the claim is the function
idempotency_claim, which also catches a row committed after the
transaction's snapshot; a server whose default is one of those costs a
fresh call one round trip more, unless the store asks for the level with
idempotency.WithIsolation.

The save is a plain INSERT, queued with COMMIT behind it (and a DELETE of
the key's expired row before it, when the claim saw one). Postgres skips
every message after an error until the pipeline's Sync, so when the INSERT
fails (a twin's row holds the key) the COMMIT never runs, and fn's writes
are rolled back with the attempt. A
connection lost while that pipeline is on the wire may have committed or
not: Do returns idempotency.ErrOutcomeUnknown, and a retry with the same key
replays or runs.

# The transaction fn gets

fn's pgx.Tx is the call's transaction on a connection of the pool. fn may
run anything on it, savepoints included (tx.Begin), but not end it: its
Commit and Rollback return an error that says so, because the store writes
the key and commits. To roll back, return an error. fn must close every
pgx.Rows it opens and must not keep tx after it returns; once the call has
ended, tx's statement methods return pgx.ErrTxClosed. By default pgx closes a
connection whose statement's context ends, so a cancelled ctx inside fn
ends the attempt and its transaction.

# Migrations

Up applies the key table's goose migrations through the pool (the same
files, version table and lock as migrations.Up), and is safe to call from
every instance at start-up. To run them with goose or a migration tool
instead, use the files under migrations/postgres (migrations.FS("postgres"))
with the version table idempotency_goose_db_version:

	goose -dir migrations/postgres -table idempotency_goose_db_version postgres "$DATABASE_URL" up

# One database, both kinds of store

The pgx store and a database/sql store (idempotency.New on lib/pq or pgx's
stdlib) send the same statements to the same table and take the same
advisory lock for a key, so services that use either can share one
database: a key written through one replays through the other, and twins on
both wait for each other.

# HTTP

The middleware of package httpadapter works on this store with
MiddlewareFor; a handler behind it gets the request's transaction with
httpadapter.TxFrom:

	h := httpadapter.MiddlewareFor(store)(mux)

	func createCharge(w http.ResponseWriter, r *http.Request) {
		tx := httpadapter.TxFrom[pgx.Tx](r.Context())
		charge, err := db.New(tx).CreateCharge(r.Context(), arg)
		...
	}
*/
package pgxstore
