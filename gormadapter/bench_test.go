package gormadapter_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/jmoiron/sqlx"
	"gorm.io/gorm"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/gormadapter"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// BenchmarkWrite measures what the GORM glue costs: a GORM insert inside
// gormadapter.Do against the same insert in a bare GORM transaction, and,
// for reference, the sqlx store against its own bare transaction, on
// Postgres through pgx's stdlib, with 16 callers on a 2-core machine
// (SetParallelism(8)). Divide a bare ns/op by its Do's for the ratio:
//
//	go test ./gormadapter -run '^$' -bench Write -benchtime 4000x
func BenchmarkWrite(b *testing.B) {
	var pgx testdb.Backend
	for _, bk := range testdb.Backends() {
		if bk.Name == "pgx" {
			pgx = bk
		}
	}
	e := conformance.OpenSQL(b, pgx)
	e.DB.SetMaxOpenConns(16)
	gdb := openGORM(b, "postgres", e.DB.DB, false)
	store, err := gormadapter.New(gdb)
	if err != nil {
		b.Fatal(err)
	}
	xstore, err := idempotency.New(e.DB)
	if err != nil {
		b.Fatal(err)
	}
	var seq atomic.Int64
	next := func() string { return fmt.Sprintf("k%d", seq.Add(1)) }
	ctx := context.Background()
	run := func(b *testing.B, op func() error) {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.Run("gorm-bare", func(b *testing.B) {
		run(b, func() error {
			return gdb.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				return tx.Create(&charge{Ref: next(), Amount: 1}).Error
			})
		})
	})
	b.Run("gorm-Do", func(b *testing.B) {
		run(b, func() error {
			_, err := gormadapter.Do(ctx, store, gdb, next(), 1, func(ctx context.Context, tx *gorm.DB) (int, error) {
				return 1, tx.Create(&charge{Ref: "x", Amount: 1}).Error
			})
			return err
		})
	})
	b.Run("sqlx-bare", func(b *testing.B) {
		run(b, func() error {
			tx, err := e.DB.BeginTxx(ctx, nil)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO charges (ref, amount) VALUES ($1, $2)`, next(), 1); err != nil {
				_ = tx.Rollback()
				return err
			}
			return tx.Commit()
		})
	})
	b.Run("sqlx-Do", func(b *testing.B) {
		run(b, func() error {
			_, err := idempotency.Do(ctx, xstore, next(), 1, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
				_, err := tx.ExecContext(ctx, `INSERT INTO charges (ref, amount) VALUES ($1, $2)`, "x", 1)
				return 1, err
			})
			return err
		})
	})
}
