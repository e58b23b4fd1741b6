package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jmoiron/sqlx"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverdatabasesql"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
	"github.com/exactlyonce/idempotency/migrations"
	"github.com/exactlyonce/idempotency/pgxstore"
)

// app is the program on one database, whatever the client API underneath:
// what the commands need.
type app interface {
	migrate(ctx context.Context) error
	api() http.Handler
	startWorker(ctx context.Context, cfg workerConfig) (*worker, error)
	jobs(ctx context.Context) ([]*rivertype.JobRow, error)
	close()
}

// stack is the key store and River on one database, through one client
// API. STx is the transaction fn gets, RTx the one River takes; riverTx
// turns the first into the second, so River inserts jobs in fn's
// transaction.
type stack[STx, RTx any] struct {
	store        *idempotency.TxStore[STx]
	driver       riverdriver.Driver[RTx]
	client       *river.Client[RTx] // inserts jobs; workers have their own
	riverTx      func(STx) RTx
	insertCharge func(ctx context.Context, tx STx, c Charge) error
	migrateKeys  func(ctx context.Context) error
	exec         func(ctx context.Context, query string) error
	closeDB      func()
}

// open connects to the database that driver and dsn name. Without a DSN,
// SQLite opens a new file in a temporary directory, which close removes.
func open(ctx context.Context, driver, dsn string) (app, error) {
	switch driver {
	case "sqlite", "pgx", "postgres":
		if driver == "sqlite" && dsn != "" {
			dsn = sqliteDSN(dsn)
		}
		db, closeDB, err := exampledb.Open(driver, dsn, "river")
		if err != nil {
			return nil, err
		}
		var rd riverdriver.Driver[*sql.Tx] = riverdatabasesql.New(db.DB)
		if driver == "sqlite" {
			rd = riversqlite.New(db.DB)
		}
		s, err := newStack(db, rd, closeDB)
		if err != nil {
			closeDB()
			return nil, err
		}
		return s, nil
	case "pgxstore":
		if dsn == "" {
			return nil, errors.New("-driver pgxstore needs a -dsn (a postgres:// URL)")
		}
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			return nil, err
		}
		s, err := newPgxStack(pool)
		if err != nil {
			pool.Close()
			return nil, err
		}
		return s, nil
	case "mysql":
		return nil, errors.New("-driver mysql: there is no River driver for MySQL or MariaDB; write an outbox row in fn's transaction instead (see examples/outbox)")
	}
	return nil, fmt.Errorf("unknown -driver %q: want sqlite, pgx, postgres or pgxstore", driver)
}

// newStack is the database/sql program: the sqlx store, whose fn gets a
// *sqlx.Tx, and River's driver for database/sql (Postgres) or SQLite, which
// takes the *sql.Tx inside it.
func newStack(db *sqlx.DB, rd riverdriver.Driver[*sql.Tx], closeDB func()) (*stack[*sqlx.Tx, *sql.Tx], error) {
	store, err := idempotency.New(db)
	if err != nil {
		return nil, err
	}
	client, err := river.NewClient(rd, &river.Config{Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	return &stack[*sqlx.Tx, *sql.Tx]{
		store:   store,
		driver:  rd,
		client:  client,
		riverTx: func(tx *sqlx.Tx) *sql.Tx { return tx.Tx },
		insertCharge: func(ctx context.Context, tx *sqlx.Tx, c Charge) error {
			_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO charges (id, customer, idempotency_key, amount, currency) VALUES (?, ?, ?, ?, ?)`),
				c.ID, c.Customer, c.Key, c.Amount, c.Currency)
			return err
		},
		migrateKeys: func(ctx context.Context) error { return migrations.Up(ctx, db) },
		exec: func(ctx context.Context, query string) error {
			_, err := db.ExecContext(ctx, query)
			return err
		},
		closeDB: closeDB,
	}, nil
}

// newPgxStack is the native pgx program: the pgx store, whose fn gets a
// pgx.Tx, and River's pgx driver, which takes it as it is.
func newPgxStack(pool *pgxpool.Pool) (*stack[pgx.Tx, pgx.Tx], error) {
	store, err := pgxstore.New(pool)
	if err != nil {
		return nil, err
	}
	rd := riverpgxv5.New(pool)
	client, err := river.NewClient(rd, &river.Config{Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	return &stack[pgx.Tx, pgx.Tx]{
		store:   store,
		driver:  rd,
		client:  client,
		riverTx: func(tx pgx.Tx) pgx.Tx { return tx },
		insertCharge: func(ctx context.Context, tx pgx.Tx, c Charge) error {
			_, err := tx.Exec(ctx, `INSERT INTO charges (id, customer, idempotency_key, amount, currency) VALUES ($1, $2, $3, $4, $5)`,
				c.ID, c.Customer, c.Key, c.Amount, c.Currency)
			return err
		},
		migrateKeys: func(ctx context.Context) error { return pgxstore.Up(ctx, pool) },
		exec: func(ctx context.Context, query string) error {
			_, err := pool.Exec(ctx, query)
			return err
		},
		closeDB: pool.Close,
	}, nil
}

// migrate applies the key table's migrations, River's, and the charges
// table, all in the one database. River's migrator takes no lock: run it
// once, before the processes start, as the migrate command does.
func (s *stack[STx, RTx]) migrate(ctx context.Context) error {
	if err := s.migrateKeys(ctx); err != nil {
		return err
	}
	m, err := rivermigrate.New(s.driver, &rivermigrate.Config{Logger: quietLogger()})
	if err != nil {
		return err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate River's tables: %w", err)
	}
	if err := s.exec(ctx, schema); err != nil {
		return fmt.Errorf("create charges: %w", err)
	}
	return nil
}

// jobs lists the collect jobs, oldest first.
func (s *stack[STx, RTx]) jobs(ctx context.Context) ([]*rivertype.JobRow, error) {
	res, err := s.client.JobList(ctx, river.NewJobListParams().Kinds(CollectArgs{}.Kind()).
		States(rivertype.JobStates()...).OrderBy(river.JobListOrderByID, river.SortOrderAsc).First(10_000))
	if err != nil {
		return nil, err
	}
	return res.Jobs, nil
}

func (s *stack[STx, RTx]) close() { s.closeDB() }

// workerConfig configures a worker process's River client.
type workerConfig struct {
	Provider    string        // the provider's base URL
	MaxWorkers  int           // jobs worked at once
	JobTimeout  time.Duration // a job's context ends after this long
	RescueAfter time.Duration // a job still running after this long (its worker died) runs again
	Logger      *slog.Logger
	// Middleware wraps every job's work: the demo and the fault test use it
	// to fail or kill a run after its provider call.
	Middleware []rivertype.Middleware
	// Events subscribes to the jobs that end (worker.events), for a caller
	// that reads them all: River keeps at most 1000 unread, and warns of
	// every one after that.
	Events bool
}

// worker is a started River client that works the collect jobs.
type worker struct {
	stop   func(ctx context.Context) error
	events <-chan *river.Event // completed, failed and cancelled jobs; nil unless workerConfig.Events
}

// startWorker starts a River client that works the collect jobs until ctx
// ends or stop is called.
func (s *stack[STx, RTx]) startWorker(ctx context.Context, cfg workerConfig) (*worker, error) {
	if cfg.Provider == "" {
		return nil, errors.New("the worker needs the provider's URL (-provider)")
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &CollectWorker{Provider: strings.TrimSuffix(cfg.Provider, "/"), Client: providerClient()})
	client, err := river.NewClient(s.driver, &river.Config{
		Queues:               map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: cfg.MaxWorkers}},
		Workers:              workers,
		JobTimeout:           cfg.JobTimeout,
		RescueStuckJobsAfter: cfg.RescueAfter,
		// SQLite and River's database/sql driver poll for jobs (pgx also
		// hears of them through LISTEN).
		FetchPollInterval: 200 * time.Millisecond,
		Logger:            cfg.Logger,
		Middleware:        cfg.Middleware,
	})
	if err != nil {
		return nil, err
	}
	var events <-chan *river.Event
	cancel := func() {}
	if cfg.Events {
		events, cancel = client.Subscribe(river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobCancelled)
	}
	if err := client.Start(ctx); err != nil {
		cancel()
		return nil, err
	}
	return &worker{
		stop: func(ctx context.Context) error {
			defer cancel()
			return client.Stop(ctx)
		},
		events: events,
	}, nil
}

// sqliteDSN turns a file name into a DSN with the settings that let the
// API, the workers and River's maintenance share the file (scratch.SQLiteDSN:
// wait for the write lock, WAL, BEGIN IMMEDIATE). A DSN with its own
// settings is used as it is.
func sqliteDSN(dsn string) string {
	if strings.Contains(dsn, "?") {
		return dsn
	}
	return scratch.SQLiteDSN(strings.TrimPrefix(dsn, "file:"), "NORMAL")
}

// quietLogger drops River's log lines below Warn, as River does by default,
// but on stderr, not stdout.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
