package idempotency_test

import (
	"context"
	"database/sql"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects/postgres"
)

// TestNewRejectsBadOptions checks that New refuses each bad option, and a
// nil or unknown database, with the exact error, which names the option;
// New does not touch the database.
func TestNewRejectsBadOptions(t *testing.T) {
	db := sqlx.NewDb(&sql.DB{}, "sqlite")
	tests := []struct {
		name string
		db   *sqlx.DB
		opts []idempotency.Option
		want string
	}{
		{"nil db", nil, nil, "idempotency: New(nil): want an open *sqlx.DB"},
		{"unknown driver", sqlx.NewDb(&sql.DB{}, "oracle"), nil,
			`idempotency: no dialect for driver "oracle": use one of cloudsqlpostgres, mysql, pgx, pgx/v4, pgx/v5, postgres, sqlite, sqlite3, or pass WithDialect`},
		{"TTL 0", db, []idempotency.Option{idempotency.WithTTL(0)}, "idempotency: WithTTL(0s): the TTL must be at least 1ms"},
		{"negative wait", db, []idempotency.Option{idempotency.WithWait(-time.Second)}, "idempotency: WithWait(-1s): the wait must not be negative"},
		{"negative retries", db, []idempotency.Option{idempotency.WithMaxRetries(-1)}, "idempotency: WithMaxRetries(-1): must not be negative"},
		{"read uncommitted", db, []idempotency.Option{idempotency.WithIsolation(sql.LevelReadUncommitted)},
			"idempotency: WithIsolation(Read Uncommitted): use READ COMMITTED or stronger; weaker levels could replay uncommitted results"},
		{"table with SQL", db, []idempotency.Option{idempotency.WithTable("keys; DROP TABLE x")},
			`idempotency: WithTable("keys; DROP TABLE x"): want an identifier of letters, digits and underscores, optionally schema-qualified`},
		{"prune batch 0", db, []idempotency.Option{idempotency.WithPruneBatch(0)}, "idempotency: WithPruneBatch(0): want 1 to 1000000"},
		{"nil logger", db, []idempotency.Option{idempotency.WithLogger(nil)}, "idempotency: WithLogger(nil): want a logger"},
		{"nil dialect", db, []idempotency.Option{idempotency.WithDialect(nil)}, "idempotency: WithDialect(nil): want a dialect"},
		{"nil codec", db, []idempotency.Option{idempotency.WithCodec(nil)}, "idempotency: WithCodec(nil): want a codec (idempotency.JSON is the default)"},
		{"dialect and table", db, []idempotency.Option{idempotency.WithDialect(postgres.New("keys")), idempotency.WithTable("billing.keys")},
			`idempotency: WithDialect and WithTable("billing.keys") together: the dialect has its own table; build it for that one (as postgres.New("billing.keys") does) and leave WithTable out`},
	}
	for _, tt := range tests {
		s, err := idempotency.New(tt.db, tt.opts...)
		if s != nil || err == nil || err.Error() != tt.want {
			t.Errorf("%s: New = %v, %v; want %q", tt.name, s, err, tt.want)
		}
	}
	if _, err := idempotency.New(db, idempotency.WithTable("billing.idempotency_keys"), idempotency.WithTTL(time.Hour)); err != nil {
		t.Errorf("good options: %v", err)
	}
}

// TestRunPrunerOptions checks that RunPruner, and New, refuse each bad
// pruner option with an error that names it, before touching the database.
func TestRunPrunerOptions(t *testing.T) {
	s := closedStore(t)
	for _, tc := range []struct {
		opt  idempotency.Option
		want string
	}{
		{idempotency.WithPruneInterval(0), "WithPruneInterval(0s)"},
		{idempotency.WithPruneInterval(-time.Second), "WithPruneInterval(-1s)"},
		{idempotency.WithPruneJitter(1), "WithPruneJitter(1)"},
		{idempotency.WithPruneJitter(-0.1), "WithPruneJitter(-0.1)"},
		{idempotency.WithPruneJitter(math.NaN()), "WithPruneJitter(NaN)"},
		{idempotency.WithLogger(nil), "WithLogger(nil)"},
		{idempotency.WithPrunePause(-time.Millisecond), "WithPrunePause(-1ms)"},
	} {
		err := s.RunPruner(context.Background(), tc.opt)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "idempotency: ") {
			t.Errorf("RunPruner with a bad option = %v; want an error naming %s", err, tc.want)
		}
		db := sqlx.NewDb(&sql.DB{}, "sqlite")
		if st, err := idempotency.New(db, tc.opt); st != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New with a bad pruner option = %v, %v; want an error naming %s", st, err, tc.want)
		}
	}
}
