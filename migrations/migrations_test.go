package migrations_test

import (
	"context"
	"database/sql"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/jmoiron/sqlx"
	"github.com/pressly/goose/v3"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/migrations"
)

var ctx = context.Background()

// appMigrations is an application's own goose history.
var appMigrations = fstest.MapFS{
	"00001_orders.sql": {Data: []byte("-- +goose Up\nCREATE TABLE orders (id INTEGER PRIMARY KEY);\n-- +goose Down\nDROP TABLE orders;\n")},
}

// gooseDialect is goose's name for the database of a database/sql driver.
func gooseDialect(t *testing.T, driver string) goose.Dialect {
	t.Helper()
	d, err := dialects.Open(driver, dialects.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	return goose.Dialect(d.(dialects.Schema).GooseDialect())
}

// TestUpLeavesTheApplicationsGooseAlone: the application migrates with
// goose's default table first; Up keeps its own history beside it.
func TestUpLeavesTheApplicationsGooseAlone(t *testing.T) {
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			db := b.OpenEmpty(t)
			app, err := goose.NewProvider(gooseDialect(t, b.Driver), db.DB, appMigrations, goose.WithDisableGlobalRegistry(true))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := app.Up(ctx); err != nil {
				t.Fatal(err)
			}
			before := versions(t, db, "goose_db_version")

			for range 2 { // and again: nothing left to do
				if err := migrations.Up(ctx, db); err != nil {
					t.Fatal(err)
				}
			}
			if after := versions(t, db, "goose_db_version"); after != before {
				t.Errorf("the application's goose_db_version changed: %q, then %q", before, after)
			}
			if got, want := versions(t, db, migrations.VersionTable), wantVersions(t, b.Kind); got != want {
				t.Errorf("%s holds versions %q, want %q", migrations.VersionTable, got, want)
			}
			var n int
			if err := db.Get(&n, `SELECT COUNT(*) FROM idempotency_keys`); err != nil {
				t.Errorf("the key table is missing: %v", err)
			}
			st, err := migrations.Status(ctx, db)
			if err != nil || len(st) != strings.Count(wantVersions(t, b.Kind), ",") {
				t.Fatalf("status: %v, %+v", err, st)
			}
			for _, m := range st {
				if m.State != goose.StateApplied {
					t.Errorf("status: %s is %s", m.Source.Path, m.State)
				}
			}
		})
	}
}

func versions(t *testing.T, db *sqlx.DB, table string) string {
	t.Helper()
	var ids []int64
	if err := db.Select(&ids, `SELECT version_id FROM `+table+` ORDER BY id`); err != nil {
		t.Fatalf("read %s: %v", table, err)
	}
	v := make([]string, len(ids))
	for i, id := range ids {
		v[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(v, ",")
}

// wantVersions is the version history a full migration leaves: 0 (goose's
// own first row), then one version per embedded file.
func wantVersions(t *testing.T, kind string) string {
	t.Helper()
	v := []string{"0"}
	for i := range testdb.MigrationFiles(t, kind) {
		v = append(v, strconv.Itoa(i+1))
	}
	return strings.Join(v, ",")
}

// TestUpFromTwoProcesses starts two processes that migrate one empty
// database at the same moment: both succeed and the history is applied once.
func TestUpFromTwoProcesses(t *testing.T) {
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			dsn := b.DSN(t)
			var cmds []*exec.Cmd
			var outs []*strings.Builder
			for range 2 {
				cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMigrate$")
				cmd.Env = append(os.Environ(), "MIGRATE_HELPER_DRIVER="+b.Driver, "MIGRATE_HELPER_DSN="+dsn)
				out := &strings.Builder{}
				cmd.Stdout, cmd.Stderr = out, out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				cmds, outs = append(cmds, cmd), append(outs, out)
			}
			for i, cmd := range cmds {
				if err := cmd.Wait(); err != nil {
					t.Fatalf("process %d: %v\n%s", i, err, outs[i])
				}
			}
			db := b.Connect(t, dsn)
			if got, want := versions(t, db, migrations.VersionTable), wantVersions(t, b.Kind); got != want {
				t.Errorf("after two processes migrated, versions %q; want %q", got, want)
			}
		})
	}
}

// TestHelperMigrate is the child process of TestUpFromTwoProcesses.
func TestHelperMigrate(t *testing.T) {
	driver, dsn := os.Getenv("MIGRATE_HELPER_DRIVER"), os.Getenv("MIGRATE_HELPER_DSN")
	if dsn == "" {
		t.Skip("runs as a child of TestUpFromTwoProcesses")
	}
	db, err := sqlx.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := migrations.Up(ctx, db); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownDriver(t *testing.T) {
	db := sqlx.NewDb(nil, "oracle")
	if err := migrations.Up(ctx, db); err == nil || !strings.Contains(err.Error(), `driver "oracle"`) {
		t.Errorf("got %v", err)
	}
	if _, err := migrations.FS("oracle"); err == nil {
		t.Error("FS(oracle): no error")
	}
	// The migrations package knows every driver of this module's dialects
	// by itself (this test does not import the root package).
	for _, driver := range []string{"pgx/v5", "sqlite3"} {
		if _, err := migrations.Provider(sqlx.NewDb(&sql.DB{}, driver)); err != nil {
			t.Errorf("Provider for %s: %v", driver, err)
		}
	}
}
