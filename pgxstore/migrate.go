package pgxstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/migrations"
)

// Up applies the key table's migrations through pool: the same goose files,
// version table (migrations.VersionTable) and lock as migrations.Up, so a
// database migrated by either is migrated for both kinds of store. It
// borrows pool's connections through a *sql.DB and leaves pool open.
func Up(ctx context.Context, pool *pgxpool.Pool) error {
	if pool == nil {
		return errors.New("pgxstore: Up(nil): want an open *pgxpool.Pool")
	}
	// Closing db closes no connection of pool's: they go back to it.
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	if err := migrations.Up(ctx, sqlx.NewDb(db, "pgx")); err != nil {
		return fmt.Errorf("pgxstore: %w", err)
	}
	return nil
}
