package mysql

import (
	"time"

	"github.com/exactlyonce/idempotency/dialects"
)

var _ dialects.FlowDialect = (*Dialect)(nil)

// FlowStatements returns the statements of flows for the dialect's key
// table.
func (d *Dialect) FlowStatements() dialects.FlowStatements { return d.flows }

// flowSQL returns the statements of flows for the tables that go with the
// key table named table (dialects.FlowTables). Leases are in
// microseconds, by UTC_TIMESTAMP(6). Takeovers lock the flow's row with
// SKIP LOCKED (MySQL 8, MariaDB 10.6 on), so that they pass over a flow
// whose step is under way instead of waiting for it.
func flowSQL(table string) dialects.FlowStatements {
	flows, steps := dialects.FlowTables(table)
	const (
		now   = `UTC_TIMESTAMP(6)`
		until = now + ` + INTERVAL ? MICROSECOND`
		due   = `lease_until <= ` + now
		key   = "`key`"
	)
	return dialects.FlowStatements{
		LeaseUnit: time.Microsecond,
		// Flows that end at once deadlock on the key table's gap locks
		// (measured on MariaDB with two completers): stored apart, the
		// value's retry does not run the last step again.
		FinishApart: true,
		// A duplicate changes nothing, so it affects no row (the driver
		// counts changed rows, not found ones, by default).
		Insert: `INSERT INTO ` + flows + ` (scope, ` + key + `, flow, fingerprint, params, token, lease_until, resumes, created_at)
VALUES (?, ?, ?, ?, ?, 1, ` + until + `, 0, ` + now + `)
ON DUPLICATE KEY UPDATE token = token`,
		Read: `SELECT flow, fingerprint, params, token, resumes, COALESCE(last_error, ''), ` + due + `
FROM ` + flows + ` WHERE scope = ? AND ` + key + ` = ?`,
		Lock: `SELECT token FROM ` + flows + `
WHERE scope = ? AND ` + key + ` = ? AND token = ? AND ` + due + ` FOR UPDATE SKIP LOCKED`,
		TakeOver: `UPDATE ` + flows + ` SET token = token + 1, resumes = resumes + 1, lease_until = ` + until + `
WHERE scope = ? AND ` + key + ` = ? AND token = ? AND ` + due,
		// GREATEST makes every fence change the row, so that it counts as
		// affected even within one microsecond of the last.
		Fence: `UPDATE ` + flows + ` SET lease_until = GREATEST(` + until + `, lease_until + INTERVAL 1 MICROSECOND), fence = ?
WHERE scope = ? AND ` + key + ` = ? AND token = ?`,
		Touch: `UPDATE ` + flows + ` SET lease_until = GREATEST(` + until + `, lease_until + INTERVAL 1 MICROSECOND)
WHERE scope = ? AND ` + key + ` = ? AND token = ? AND fence = ?`,
		Steps:  `SELECT seq, name, value FROM ` + steps + ` WHERE scope = ? AND ` + key + ` = ? ORDER BY seq`,
		Record: `INSERT INTO ` + steps + ` (scope, ` + key + `, seq, name, value, created_at) VALUES (?, ?, ?, ?, ?, ` + now + `)`,
		Release: `UPDATE ` + flows + ` SET lease_until = LEAST(lease_until, ` + now + `), last_error = ?
WHERE scope = ? AND ` + key + ` = ? AND token = ?`,
		DeleteExpiredKey: `DELETE FROM ` + table + ` WHERE scope = ? AND ` + key + ` = ? AND expires_at <= ` + now,
		InsertKey: `INSERT INTO ` + table + ` (scope, ` + key + `, fingerprint, value, failed, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ` + now + `, ` + until + `)`,
		DeleteSteps: `DELETE FROM ` + steps + ` WHERE scope = ? AND ` + key + ` = ?`,
		DeleteFlow:  `DELETE FROM ` + flows + ` WHERE scope = ? AND ` + key + ` = ? AND token = ?`,
		Stats:       `SELECT COUNT(*), COALESCE(SUM(CASE WHEN ` + due + ` THEN 1 ELSE 0 END), 0) FROM ` + flows,
		Expired: `SELECT scope, ` + key + `, fingerprint, params, token, resumes, COALESCE(last_error, ''),
	TIMESTAMPDIFF(MICROSECOND, lease_until, ` + now + `) DIV 1000
FROM ` + flows + ` WHERE flow = ? AND ` + due + ` ORDER BY lease_until LIMIT ?`,
	}
}
