package idempotency_test

import (
	"context"
	"database/sql"
	"errors"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestBadInputWritesNothing gives Do each bad input, on every backend, and checks the
// exact error, that errors.Is finds its sentinel, and that nothing was
// written: no key row, no business row.
func TestBadInputWritesNothing(t *testing.T) {
	long := strings.Repeat("k", 256)
	tests := []struct {
		name   string
		scope  string
		key    string
		params any
		value  any // what fn returns
		nilFn  bool
		want   string
		is     error
		calls  int64 // how many times fn may run (it runs for a bad value)
	}{
		{name: "empty key", key: "",
			want: "idempotency: invalid key: the key is empty", is: idempotency.ErrInvalidKey},
		{name: "key over 255 bytes", key: long,
			want: "idempotency: invalid key: the key is 256 bytes, longer than 255", is: idempotency.ErrInvalidKey},
		{name: "key with a newline", key: "abc\n",
			want: "idempotency: invalid key: byte 3 is 0x0a, not printable ASCII", is: idempotency.ErrInvalidKey},
		{name: "key with a NUL", key: "\x00abc",
			want: "idempotency: invalid key: byte 0 is 0x00, not printable ASCII", is: idempotency.ErrInvalidKey},
		{name: "key with DEL", key: "a\x7f",
			want: "idempotency: invalid key: byte 1 is 0x7f, not printable ASCII", is: idempotency.ErrInvalidKey},
		{name: "key with UTF-8", key: "clé",
			want: "idempotency: invalid key: byte 2 is 0xc3, not printable ASCII", is: idempotency.ErrInvalidKey},
		{name: "scope over 255 bytes", scope: long, key: "k",
			want: "idempotency: invalid scope: the scope is 256 bytes, longer than 255", is: idempotency.ErrInvalidScope},
		{name: "params a channel", key: "k", params: make(chan int),
			want: "idempotency: params cannot be encoded as JSON: json: unsupported type: chan int"},
		{name: "params NaN", key: "k", params: map[string]float64{"amount": math.NaN()},
			want: "idempotency: params cannot be encoded as JSON: json: unsupported value: NaN"},
		{name: "value a function", key: "k", value: func() {}, calls: 1,
			want: "idempotency: fn's value cannot be encoded as JSON (nothing was committed): json: unsupported type: func()"},
		{name: "value +Inf", key: "k", value: math.Inf(1), calls: 1,
			want: "idempotency: fn's value cannot be encoded as JSON (nothing was committed): json: unsupported value: +Inf"},
		{name: "nil fn", key: "k", nilFn: true,
			want: "idempotency: nil fn: pass the function that does the work"},
	}
	each(t, func(t *testing.T, e env) {
		s := e.store(t)
		for _, tt := range tests {
			var calls atomic.Int64
			fn := func(ctx context.Context, tx *sqlx.Tx) (any, error) {
				calls.Add(1)
				if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO charges (k, amount) VALUES (?, ?)`), tt.key, 1); err != nil {
					return nil, err
				}
				return tt.value, nil
			}
			if tt.nilFn {
				fn = nil
			}
			_, err := idempotency.Do(context.Background(), s.Scope(tt.scope), tt.key, tt.params, fn)
			if err == nil || err.Error() != tt.want {
				t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("%s: errors.Is(%v, %v) = false", tt.name, err, tt.is)
			}
			if n := calls.Load(); n != tt.calls {
				t.Errorf("%s: fn ran %d times, want %d", tt.name, n, tt.calls)
			}
			assertEmpty(t, e, tt.name)
		}
	})
}

// TestBadInputOptions checks that New refuses each bad option with the exact
// error, and that DoTx refuses a nil transaction and Do a nil store.
func TestBadInputOptions(t *testing.T) {
	db, err := sqlx.Open("sqlite", testdb.SQLiteDSN(t.TempDir()+"/opts.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tests := []struct {
		name string
		db   *sqlx.DB
		opt  idempotency.Option
		want string
	}{
		{"nil db", nil, nil, "idempotency: New(nil): want an open *sqlx.DB"},
		{"TTL 0", db, idempotency.WithTTL(0), "idempotency: WithTTL(0s): the TTL must be at least 1ms"},
		{"negative wait", db, idempotency.WithWait(-time.Second), "idempotency: WithWait(-1s): the wait must not be negative"},
		{"negative retries", db, idempotency.WithMaxRetries(-1), "idempotency: WithMaxRetries(-1): must not be negative"},
		{"read uncommitted", db, idempotency.WithIsolation(sql.LevelReadUncommitted),
			"idempotency: WithIsolation(Read Uncommitted): use READ COMMITTED or stronger; weaker levels could replay uncommitted results"},
		{"table with SQL", db, idempotency.WithTable("keys; DROP TABLE x"),
			`idempotency: WithTable("keys; DROP TABLE x"): want an identifier of letters, digits and underscores, optionally schema-qualified`},
		{"prune batch 0", db, idempotency.WithPruneBatch(0), "idempotency: WithPruneBatch(0): want 1 to 1000000"},
		{"nil logger", db, idempotency.WithLogger(nil), "idempotency: WithLogger(nil): want a logger"},
		{"nil dialect", db, idempotency.WithDialect(nil), "idempotency: WithDialect(nil): want a dialect"},
	}
	for _, tt := range tests {
		s, err := idempotency.New(tt.db, tt.opt)
		if s != nil || err == nil || err.Error() != tt.want {
			t.Errorf("%s: New = %v, %v; want %q", tt.name, s, err, tt.want)
		}
	}
	fn := func(context.Context, *sqlx.Tx) (int, error) { return 1, nil }
	if _, err := idempotency.Do(context.Background(), nil, "k", nil, fn); err == nil ||
		err.Error() != "idempotency: nil *Store: create one with idempotency.New" {
		t.Errorf("Do with a nil store: %v", err)
	}
	s, err := idempotency.New(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := idempotency.DoTx(context.Background(), nil, s, "k", nil, fn); err == nil ||
		err.Error() != "idempotency: DoTx with a nil *sqlx.Tx: begin one, or call Do" {
		t.Errorf("DoTx with a nil tx: %v", err)
	}
}

// assertEmpty checks that the key table and the business table are empty.
func assertEmpty(t *testing.T, e env, name string) {
	t.Helper()
	for _, table := range []string{"idempotency_keys", "charges"} {
		var n int
		if err := e.db.Get(&n, `SELECT COUNT(*) FROM `+table); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s: %d rows in %s after a bad input, want 0", name, n, table)
		}
	}
}
