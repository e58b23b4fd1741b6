package sqlstore_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/sqlstore"
)

func TestNewRefusesBadInput(t *testing.T) {
	t.Parallel()
	if _, err := sqlstore.New(nil, "pgx"); err == nil || !strings.Contains(err.Error(), "want an open *sql.DB") {
		t.Fatalf("New(nil): got %v, want an error that asks for a *sql.DB", err)
	}
	db, err := sql.Open("sqlite", "file::memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := sqlstore.New(db, "nosuchdriver"); err == nil || !strings.Contains(err.Error(), `no dialect for driver "nosuchdriver"`) {
		t.Fatalf("New(db, nosuchdriver): got %v, want an error naming the driver", err)
	}
	d, err := dialects.Open("sqlite", dialects.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sqlstore.New(db, "sqlite", idempotency.WithDialect(d)); err == nil || !strings.Contains(err.Error(), "WithDialect") {
		t.Fatalf("New with WithDialect: got %v, want an error naming WithDialect", err)
	}
}

// TestSharesKeysWithTheSqlxStore: both stores speak one schema, so a key
// written through *sql.Tx replays on the sqlx store, and the other way.
func TestSharesKeysWithTheSqlxStore(t *testing.T) {
	t.Parallel()
	for _, b := range testdb.Backends()[:4] { // sqlite, postgres, pgx, mysql
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			e := conformance.OpenSQL(t, b)
			std, err := sqlstore.New(e.DB.DB, b.Driver)
			if err != nil {
				t.Fatal(err)
			}
			x, err := idempotency.New(e.DB)
			if err != nil {
				t.Fatal(err)
			}
			v, err := idempotency.Do(ctx, std, "k1", 1, func(ctx context.Context, tx *sql.Tx) (string, error) {
				return "from *sql.Tx", nil
			})
			if err != nil || v != "from *sql.Tx" {
				t.Fatalf("Do on sqlstore: %q, %v", v, err)
			}
			res, err := idempotency.Run(ctx, x, "k1", 1, func(ctx context.Context, tx *sqlx.Tx) (string, error) {
				t.Error("fn ran on the sqlx store for a key the database/sql store had written")
				return "", nil
			})
			if err != nil || !res.Replayed || res.Value != "from *sql.Tx" {
				t.Fatalf("sqlx store on the same key: %+v, %v; want the replay", res, err)
			}
			if _, err := idempotency.Do(ctx, x, "k2", 2, func(ctx context.Context, tx *sqlx.Tx) (string, error) {
				return "from *sqlx.Tx", nil
			}); err != nil {
				t.Fatal(err)
			}
			res, err = idempotency.Run(ctx, std, "k2", 2, func(ctx context.Context, tx *sql.Tx) (string, error) {
				t.Error("fn ran on the database/sql store for a key the sqlx store had written")
				return "", nil
			})
			if err != nil || !res.Replayed || res.Value != "from *sqlx.Tx" {
				t.Fatalf("database/sql store on the same key: %+v, %v; want the replay", res, err)
			}
		})
	}
}
