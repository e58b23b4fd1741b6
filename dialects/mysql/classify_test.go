package mysql_test

import (
	"context"
	"strings"
	"testing"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/dialects/mysql"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestClassifyPacketTooLarge: a statement over max_allowed_packet, refused
// by the server (1153) or by the driver before sending it (ErrPktTooLarge),
// is final: running the transaction again sends the same statement. The
// connection errors beside 1153 stay Lost.
func TestClassifyPacketTooLarge(t *testing.T) {
	d := mysql.New(dialects.DefaultTable)
	for _, c := range []struct {
		err  error
		want dialects.Class
	}{
		{&gomysql.MySQLError{Number: 1153, Message: "Got a packet bigger than 'max_allowed_packet' bytes"}, dialects.Definite},
		{gomysql.ErrPktTooLarge, dialects.Definite},
		{&gomysql.MySQLError{Number: 1152}, dialects.Lost}, // aborted connection
		{&gomysql.MySQLError{Number: 1158}, dialects.Lost}, // read error
		{gomysql.ErrInvalidConn, dialects.Lost},
	} {
		if got := d.Classify(c.err); got != c.want {
			t.Errorf("%v: class %v, want %v", c.err, got, c.want)
		}
	}
}

// TestPacketLimit: the save's check refuses a value that the session's
// max_allowed_packet does not leave room for, with an error that names it
// and is final, and lets through one that fits. Small values are not
// checked: nothing is asked of the server.
func TestPacketLimit(t *testing.T) {
	ctx := context.Background()
	db := testdb.Backend{Name: "mysql", Driver: "mysql", Kind: "mysql"}.OpenEmpty(t)
	var limit int
	if err := db.Get(&limit, `SELECT @@max_allowed_packet`); err != nil {
		t.Fatal(err)
	}
	var p mysql.PacketLimit
	if err := p.Fits(ctx, nil, 1000); err != nil { // nil: a query would panic
		t.Errorf("a 1000-byte value: %v", err)
	}
	for _, n := range []int{limit / 2, limit - 2048} {
		if err := p.Fits(ctx, db, n); err != nil {
			t.Errorf("a value of %d bytes, under max_allowed_packet (%d): %v", n, limit, err)
		}
	}
	err := p.Fits(ctx, db, limit)
	if !mysql.PacketTooLarge(err) || !strings.Contains(err.Error(), "max_allowed_packet") {
		t.Fatalf("a value of max_allowed_packet's %d bytes: %v; want the check's refusal", limit, err)
	}
	if c := mysql.New(dialects.DefaultTable).Classify(err); c != dialects.Definite {
		t.Errorf("the check's refusal: class %v, want Definite", c)
	}
}
