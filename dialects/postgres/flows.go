package postgres

import (
	"time"

	"github.com/exactlyonce/idempotency/dialects"
)

var _ dialects.FlowDialect = (*Dialect)(nil)

// FlowStatements returns the statements of flows for the dialect's key
// table.
func (d *Dialect) FlowStatements() dialects.FlowStatements { return d.flows }

// FlowMark is the transaction-local setting that the statements for
// pipelining clients (LockFence, and Begin where it starts a flow) set to
// the step's mark, and RecordOrFail and FinishOrFail check.
const FlowMark = "idempotency.flow_fence"

// marked is true in a transaction marked with the mark in parameter p.
func marked(p string) string {
	return `coalesce(current_setting('` + FlowMark + `', true), '') = ` + p + `::bigint::text`
}

// FlowSQL returns the statements of flows for the tables that go with the
// key table named table (dialects.FlowTables), shared by the database/sql
// dialect and the pgx store. Leases are in microseconds, and count from
// clock_timestamp(), the moment of the statement, rather than from the
// transaction's start (now()).
func FlowSQL(table string) dialects.FlowStatements {
	flows, steps := dialects.FlowTables(table)
	fence := `UPDATE ` + flows + ` SET lease_until = clock_timestamp() + $1::float8 * interval '1 microsecond', fence = $2
WHERE scope = $3 AND key = $4 AND token = $5`
	touch := `UPDATE ` + flows + ` SET lease_until = clock_timestamp() + $1::float8 * interval '1 microsecond'
WHERE scope = $2 AND key = $3 AND token = $4 AND fence = $5`
	const (
		until = `clock_timestamp() + $1::float8 * interval '1 microsecond'`
		due   = `lease_until <= clock_timestamp()`
	)
	return dialects.FlowStatements{
		LeaseUnit: time.Microsecond,
		Insert: `INSERT INTO ` + flows + ` (scope, key, flow, fingerprint, params, token, lease_until, resumes, created_at)
VALUES ($1, $2, $3, $4, $5, 1, clock_timestamp() + $6::float8 * interval '1 microsecond', 0, now())
ON CONFLICT (scope, key) DO NOTHING`,
		Read: `SELECT flow, fingerprint, params, token, resumes, COALESCE(last_error, ''), ` + due + `
FROM ` + flows + ` WHERE scope = $1 AND key = $2`,
		Lock: `SELECT token FROM ` + flows + `
WHERE scope = $1 AND key = $2 AND token = $3 AND ` + due + ` FOR UPDATE SKIP LOCKED`,
		TakeOver: `UPDATE ` + flows + ` SET token = token + 1, resumes = resumes + 1, lease_until = ` + until + `
WHERE scope = $2 AND key = $3 AND token = $4 AND ` + due,
		Fence: fence,
		// The record and the row are read with the statement's snapshot;
		// the lock is tried only where both are missing, and the insert
		// made only where the lock was taken. A row committed after the
		// snapshot makes the insert do nothing (started is 0), and the
		// caller reads again.
		Begin: `WITH rec AS (
	SELECT fingerprint, value, failed FROM ` + table + `
	WHERE scope = $1 AND key = $2 AND expires_at > now()
), cur AS (
	SELECT flow, fingerprint, params, token, resumes, COALESCE(last_error, '') AS last_error, ` + due + ` AS expired
	FROM ` + flows + ` WHERE scope = $1 AND key = $2
), lock AS (
	SELECT pg_try_advisory_xact_lock($3) AS locked
	WHERE NOT EXISTS (SELECT FROM rec) AND NOT EXISTS (SELECT FROM cur)
), ins AS (
	INSERT INTO ` + flows + ` (scope, key, flow, fingerprint, params, token, fence, lease_until, resumes, created_at)
	SELECT $1, $2, $4, $5, $6, 1, $8::bigint, clock_timestamp() + $7::float8 * interval '1 microsecond', 0, now()
	FROM lock WHERE locked AND set_config('` + FlowMark + `', $8::bigint::text, true) IS NOT NULL
	ON CONFLICT (scope, key) DO NOTHING
	RETURNING 1
)
SELECT (SELECT count(*) FROM ins) = 1, (SELECT locked FROM lock),
	rec.fingerprint, rec.value, rec.failed,
	cur.flow, cur.fingerprint, cur.params, cur.token, cur.resumes, cur.last_error, cur.expired
FROM (VALUES (1)) AS one (x) LEFT JOIN rec ON true LEFT JOIN cur ON true`,
		Touch: touch,
		// The pipelining statements mark the transaction, not the row:
		// locking the row writes no new version of it, and a setting made
		// with set_config(..., true) ends with its transaction, so a
		// statement that runs after fn ended the transaction finds no mark.
		LockFence: `SELECT set_config('` + FlowMark + `', $4::bigint::text, true)
FROM ` + flows + ` WHERE scope = $1 AND key = $2 AND token = $3 FOR UPDATE`,
		// A division by zero where the transaction lacks the mark. The
		// lease is extended only when less than half of it is left.
		RecordOrFail: `WITH mine AS (
	SELECT ` + marked("$5") + ` AS ok
), extended AS (
	UPDATE ` + flows + ` SET lease_until = clock_timestamp() + $1::float8 * interval '1 microsecond'
	WHERE scope = $2 AND key = $3 AND token = $4 AND (SELECT ok FROM mine)
	AND lease_until < clock_timestamp() + $1::float8 / 2 * interval '1 microsecond'
), recorded AS (
	INSERT INTO ` + steps + ` (scope, key, seq, name, value, created_at)
	SELECT $2, $3, r.seq, r.name, r.value, now()
	FROM unnest($6::integer[], $7::text[], $8::bytea[]) AS r (seq, name, value)
	WHERE (SELECT ok FROM mine)
)
SELECT 1 / (CASE WHEN (SELECT ok FROM mine) THEN 1 ELSE 0 END)`,
		// The record is a plain insert: a live record of the key (written
		// by Do with the same key) fails it rather than being overwritten.
		FinishOrFail: `WITH done AS (
	DELETE FROM ` + flows + ` WHERE scope = $1 AND key = $2 AND token = $3 AND ` + marked("$4") + `
	RETURNING 1
), steps AS (
	DELETE FROM ` + steps + ` WHERE scope = $1 AND key = $2 AND EXISTS (SELECT FROM done)
), record AS (
	INSERT INTO ` + table + ` (scope, key, fingerprint, value, failed, created_at, expires_at)
	SELECT $1, $2, $5, $6, $7, now(), clock_timestamp() + $8::float8 * interval '1 microsecond' FROM done
)
SELECT 1 / (SELECT count(*) FROM done)`,
		Steps:  `SELECT seq, name, value FROM ` + steps + ` WHERE scope = $1 AND key = $2 ORDER BY seq`,
		Record: `INSERT INTO ` + steps + ` (scope, key, seq, name, value, created_at) VALUES ($1, $2, $3, $4, $5, now())`,
		Release: `UPDATE ` + flows + ` SET lease_until = LEAST(lease_until, clock_timestamp()), last_error = $1
WHERE scope = $2 AND key = $3 AND token = $4`,
		DeleteExpiredKey: `DELETE FROM ` + table + ` WHERE scope = $1 AND key = $2 AND expires_at <= now()`,
		InsertKey: `INSERT INTO ` + table + ` (scope, key, fingerprint, value, failed, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, now(), clock_timestamp() + $6::float8 * interval '1 microsecond')`,
		DeleteSteps: `DELETE FROM ` + steps + ` WHERE scope = $1 AND key = $2`,
		DeleteFlow:  `DELETE FROM ` + flows + ` WHERE scope = $1 AND key = $2 AND token = $3`,
		Stats:       `SELECT COUNT(*), COALESCE(SUM(CASE WHEN ` + due + ` THEN 1 ELSE 0 END), 0) FROM ` + flows,
		Expired: `SELECT scope, key, fingerprint, params, token, resumes, COALESCE(last_error, ''),
	(EXTRACT(EPOCH FROM clock_timestamp() - lease_until) * 1000)::bigint
FROM ` + flows + ` WHERE flow = $1 AND ` + due + ` ORDER BY lease_until LIMIT $2`,
	}
}
