package dialects_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/exactlyonce/idempotency/dialects"
	_ "github.com/exactlyonce/idempotency/dialects/mysql"
	"github.com/exactlyonce/idempotency/dialects/postgres"
	_ "github.com/exactlyonce/idempotency/dialects/sqlite"
	"github.com/exactlyonce/idempotency/migrations"
)

// TestOpen: every database/sql driver name the dialects of this module
// serve opens its dialect, for the table given, and the dialect has its
// schema: it implements Schema and has a folder of migrations.
func TestOpen(t *testing.T) {
	for driver, want := range map[string]string{
		"postgres": "postgres", "pgx": "postgres", "pgx/v5": "postgres", "pgx/v4": "postgres", "cloudsqlpostgres": "postgres",
		"mysql":  "mysql",
		"sqlite": "sqlite", "sqlite3": "sqlite",
	} {
		d, err := dialects.Open(driver, "billing.keys")
		if err != nil {
			t.Errorf("Open(%q): %v", driver, err)
			continue
		}
		if d.Name() != want {
			t.Errorf("Open(%q) is the %s dialect, want %s", driver, d.Name(), want)
		}
		if _, ok := d.(dialects.Schema); !ok {
			t.Errorf("the %s dialect does not implement Schema", d.Name())
		}
		if _, err := migrations.FS(d.Name()); err != nil {
			t.Errorf("the %s dialect has no migrations: %v", d.Name(), err)
		}
	}
	if !slices.Contains(dialects.Drivers(), "pgx/v5") {
		t.Errorf("Drivers() = %v, without pgx/v5", dialects.Drivers())
	}
}

// TestOpenUnknown: a name with no dialect is an error that names the
// registered ones and the ways out.
func TestOpenUnknown(t *testing.T) {
	d, err := dialects.Open("oracle", dialects.DefaultTable)
	if d != nil || err == nil {
		t.Fatalf("Open(oracle) = %v, %v; want an error", d, err)
	}
	for _, want := range []string{`"oracle"`, "pgx, pgx/v4, pgx/v5, postgres, sqlite, sqlite3", "dialects.Register", "WithDialect"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open(oracle): %q does not say %q", err, want)
		}
	}
}

// TestRegister: a dialect registered under a new driver name opens for
// it with the table given; a name cannot be registered twice, nor with no
// dialect.
func TestRegister(t *testing.T) {
	var table string
	dialects.Register("test-postgres-proxy", func(tb string) dialects.Dialect {
		table = tb
		return postgres.New(tb)
	})
	d, err := dialects.Open("test-postgres-proxy", "billing.keys")
	if err != nil || d.Name() != "postgres" || table != "billing.keys" {
		t.Fatalf("Open(test-postgres-proxy) = %v, %v (table %q)", d, err, table)
	}
	for name, open := range map[string]func(string) dialects.Dialect{
		"test-postgres-proxy": func(tb string) dialects.Dialect { return postgres.New(tb) },
		"test-nil":            nil,
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register(%q) did not panic", name)
				}
			}()
			dialects.Register(name, open)
		}()
	}
}
