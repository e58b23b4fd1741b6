package idempotency_test

import (
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

func TestNewRejectsBadOptions(t *testing.T) {
	db := sqlx.NewDb(&sql.DB{}, "sqlite")
	cases := []struct {
		opt  idempotency.Option
		name string
	}{
		{idempotency.WithTTL(0), "WithTTL"},
		{idempotency.WithWait(-time.Second), "WithWait"},
		{idempotency.WithMaxRetries(-1), "WithMaxRetries"},
		{idempotency.WithIsolation(sql.LevelReadUncommitted), "WithIsolation"},
		{idempotency.WithTable("keys; DROP TABLE users"), "WithTable"},
		{idempotency.WithPruneBatch(0), "WithPruneBatch"},
		{idempotency.WithLogger(nil), "WithLogger"},
		{idempotency.WithDialect(nil), "WithDialect"},
	}
	for _, c := range cases {
		if _, err := idempotency.New(db, c.opt); err == nil || !strings.Contains(err.Error(), c.name) {
			t.Errorf("%s: got %v, want an error naming the option", c.name, err)
		}
	}
	if _, err := idempotency.New(nil); err == nil {
		t.Error("New(nil): no error")
	}
	if _, err := idempotency.New(sqlx.NewDb(&sql.DB{}, "oracle")); err == nil || !strings.Contains(err.Error(), `"oracle"`) {
		t.Errorf("unknown driver: %v", err)
	}
	if _, err := idempotency.New(db, idempotency.WithTable("billing.idempotency_keys"), idempotency.WithTTL(time.Hour)); err != nil {
		t.Errorf("good options: %v", err)
	}
}
