package sqlite

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
// milliseconds, by NowMillis. A takeover is one UPDATE: SQLite has one
// writer, so no step is under way while it runs.
func flowSQL(table string) dialects.FlowStatements {
	flows, steps := dialects.FlowTables(table)
	const (
		until = NowMillis + ` + ?`
		due   = `lease_until <= ` + NowMillis
		key   = `"key"`
	)
	return dialects.FlowStatements{
		LeaseUnit: time.Millisecond,
		Insert: `INSERT INTO ` + flows + ` (scope, ` + key + `, flow, fingerprint, params, token, lease_until, resumes, created_at)
VALUES (?, ?, ?, ?, ?, 1, ` + until + `, 0, ` + NowMillis + `)
ON CONFLICT (scope, ` + key + `) DO NOTHING`,
		Read: `SELECT flow, fingerprint, params, token, resumes, COALESCE(last_error, ''), ` + due + `
FROM ` + flows + ` WHERE scope = ? AND ` + key + ` = ?`,
		TakeOver: `UPDATE ` + flows + ` SET token = token + 1, resumes = resumes + 1, lease_until = ` + until + `
WHERE scope = ? AND ` + key + ` = ? AND token = ? AND ` + due,
		Fence: `UPDATE ` + flows + ` SET lease_until = ` + until + `, fence = ?
WHERE scope = ? AND ` + key + ` = ? AND token = ?`,
		Touch: `UPDATE ` + flows + ` SET lease_until = ` + until + `
WHERE scope = ? AND ` + key + ` = ? AND token = ? AND fence = ?`,
		Steps:  `SELECT seq, name, value FROM ` + steps + ` WHERE scope = ? AND ` + key + ` = ? ORDER BY seq`,
		Record: `INSERT INTO ` + steps + ` (scope, ` + key + `, seq, name, value, created_at) VALUES (?, ?, ?, ?, ?, ` + NowMillis + `)`,
		Release: `UPDATE ` + flows + ` SET lease_until = MIN(lease_until, ` + NowMillis + `), last_error = ?
WHERE scope = ? AND ` + key + ` = ? AND token = ?`,
		DeleteExpiredKey: `DELETE FROM ` + table + ` WHERE scope = ? AND ` + key + ` = ? AND expires_at <= ` + NowMillis,
		InsertKey: `INSERT INTO ` + table + ` (scope, ` + key + `, fingerprint, value, failed, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ` + NowMillis + `, ` + until + `)`,
		DeleteSteps: `DELETE FROM ` + steps + ` WHERE scope = ? AND ` + key + ` = ?`,
		DeleteFlow:  `DELETE FROM ` + flows + ` WHERE scope = ? AND ` + key + ` = ? AND token = ?`,
		Stats:       `SELECT COUNT(*), COALESCE(SUM(CASE WHEN ` + due + ` THEN 1 ELSE 0 END), 0) FROM ` + flows,
		Expired: `SELECT scope, ` + key + `, fingerprint, params, token, resumes, COALESCE(last_error, ''),
	` + NowMillis + ` - lease_until
FROM ` + flows + ` WHERE flow = ? AND ` + due + ` ORDER BY lease_until LIMIT ?`,
	}
}
