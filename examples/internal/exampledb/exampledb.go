// Package exampledb is what the example programs share and no reader needs
// to copy: the -driver and -dsn flags, opening the database (a new SQLite
// file by default), and random ids.
package exampledb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"

	_ "github.com/go-sql-driver/mysql" // -driver mysql
	_ "github.com/jackc/pgx/v5/stdlib" // -driver pgx
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"  // -driver postgres
	_ "modernc.org/sqlite" // -driver sqlite, the default

	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
)

// Main parses -driver and -dsn, opens the database, calls run with stdout,
// and exits non-zero if run fails. name names the temporary SQLite file.
func Main(name string, run func(ctx context.Context, w io.Writer, db *sqlx.DB) error) {
	driver := flag.String("driver", "sqlite", "database/sql driver: sqlite, postgres, pgx or mysql")
	dsn := flag.String("dsn", "", "data source name (default: a new SQLite file in a temporary directory)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	db, closeDB, err := Open(*driver, *dsn, name)
	if err != nil {
		log.Fatal(err)
	}
	err = run(ctx, os.Stdout, db)
	closeDB()
	if err != nil {
		log.Fatal(err)
	}
}

// Open opens the database the flags name. Without a DSN it creates a SQLite
// file in a new temporary directory, which closeDB removes.
func Open(driver, dsn, name string) (db *sqlx.DB, closeDB func(), err error) {
	dir := ""
	if dsn == "" {
		if driver != "sqlite" {
			return nil, nil, fmt.Errorf("-driver %s needs a -dsn", driver)
		}
		if dir, err = os.MkdirTemp("", name+"-"); err != nil {
			return nil, nil, err
		}
		// Wait for the write lock instead of failing at once, WAL (readers
		// do not block the writer), and BEGIN IMMEDIATE (two writers queue
		// rather than deadlock when both try to upgrade a read lock).
		dsn = scratch.SQLiteDSN(filepath.Join(dir, name+".db"), "NORMAL")
	}
	db, err = sqlx.Open(driver, dsn)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, err
	}
	return db, func() { _ = db.Close(); _ = os.RemoveAll(dir) }, nil
}

// NewID returns prefix followed by 16 random hex digits.
func NewID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}
