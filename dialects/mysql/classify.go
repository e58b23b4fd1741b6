package mysql

import (
	"errors"

	"github.com/go-sql-driver/mysql"

	"github.com/exactlyonce/idempotency/dialects"
)

// Classify sorts go-sql-driver/mysql errors by server error number.
func (d *Dialect) Classify(err error) dialects.Class {
	var me *mysql.MySQLError
	var big *packetTooLargeError
	switch {
	case errors.As(err, &big), errors.Is(err, mysql.ErrPktTooLarge):
		// Sending it again sends the same packet; see packetTooLargeError.
		return dialects.Definite
	case errors.As(err, &me):
		switch me.Number {
		case 1213, // ER_LOCK_DEADLOCK: the transaction was rolled back
			// ER_CHECKREAD: MariaDB (11.6.2 on, REPEATABLE READ with
			// innodb_snapshot_isolation, its default) found a row changed
			// since the transaction's snapshot, and rolled it back as
			// after a deadlock.
			1020:
			return dialects.Retry
		case 1205: // ER_LOCK_WAIT_TIMEOUT
			return dialects.LockTimeout
		case 1153:
			// ER_NET_PACKET_TOO_LARGE: a statement bigger than the
			// server's max_allowed_packet. The server closes the
			// connection after it, but the transaction is not worth
			// running again: its next try sends the same statement.
			return dialects.Definite
		case 1053, 1077, 1152, 1158, 1159, 1160, 1161, 1927, 4031:
			// Shutdown, aborted or killed connection, network errors.
			return dialects.Lost
		}
		if c, ok := tidbClass(me); ok {
			return c
		}
		return dialects.Definite
	case errors.Is(err, mysql.ErrInvalidConn), dialects.ConnectionLost(err):
		return dialects.Lost
	}
	return dialects.Unknown
}
