// Command river charges a customer at a payment provider exactly once in
// effect, although a rollback cannot take back an HTTP call and any process
// can die at any moment, with River, a job queue that keeps its jobs in the
// application's own database.
//
// The API never calls the provider. Its handler, which the idempotency
// middleware runs as fn of idempotency.Run, writes the charge and inserts a
// River job through the same transaction (Client.InsertTx), so the job
// exists if and only if the charge and its key committed. A River worker
// then calls the provider, through httpadapter.Transport, with an
// Idempotency-Key derived from the customer, the client's key and the step
// (idempotency.DownstreamKey). When the worker dies after the call and
// before River marks the job done, River runs the job again; it sends the
// same key, and the provider, which honours it, answers with the charge it
// already made.
//
// The whole story in one process, on embedded SQLite:
//
//	go run ./examples/river
//	go run ./examples/river -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'      # database/sql
//	go run ./examples/river -driver pgxstore -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable' # the pgx store
//
// Or as the processes of a deployment, each in a terminal of its own (add
// -driver and -dsn for Postgres):
//
//	go run ./examples/river migrate  -dsn river.db
//	go run ./examples/river provider -addr 127.0.0.1:8081
//	go run ./examples/river api      -dsn river.db -addr 127.0.0.1:8080
//	go run ./examples/river worker   -dsn river.db -provider http://127.0.0.1:8081
//	curl -i -H 'Idempotency-Key: order-1' -d '{"amount": 1000, "currency": "EUR"}' http://127.0.0.1:8080/v1/charges
//
// River runs on Postgres and SQLite, not on MySQL: there, write an outbox
// row instead (examples/outbox).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/riverqueue/river/rivertype"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, hooks{})
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "river:", err)
		os.Exit(1)
	}
}

// hooks let the fault test kill a process at a chosen point; main sets
// none.
type hooks struct {
	api    func(http.Handler) http.Handler // wraps the API's handler
	worker []rivertype.Middleware          // wrap each job's work
}

// run runs the command args name (the demo when none) and writes what it
// has to say to w.
func run(ctx context.Context, args []string, w io.Writer, h hooks) error {
	cmd := "demo"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	driver := fs.String("driver", "sqlite", "sqlite, pgx or postgres (database/sql), or pgxstore (native pgx)")
	dsn := fs.String("dsn", "", "the database: a file for sqlite, a postgres:// URL for the others (demo default: a new SQLite file)")
	addr := fs.String("addr", "127.0.0.1:8080", "api, provider: listen address")
	providerURL := fs.String("provider", "", "worker: the provider's base URL")
	workers := fs.Int("workers", 10, "worker: jobs worked at once")
	jobTimeout := fs.Duration("job-timeout", 30*time.Second, "worker: how long one run of a job may take")
	rescueAfter := fs.Duration("rescue-after", time.Minute, "worker: a job still running after this long (its worker died) runs again; at least -job-timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", cmd, fs.Args())
	}

	switch cmd {
	case "demo", "migrate", "api", "worker":
	case "provider":
		return serve(ctx, w, *addr, "provider", newProvider(w))
	default:
		return fmt.Errorf("unknown command %q: want demo, migrate, api, worker or provider", cmd)
	}
	if cmd != "demo" && *dsn == "" {
		return fmt.Errorf("%s: needs -dsn", cmd)
	}
	a, err := open(ctx, *driver, *dsn)
	if err != nil {
		return err
	}
	defer a.close()

	switch cmd {
	case "demo":
		if err := a.migrate(ctx); err != nil {
			return err
		}
		return demo(ctx, w, a, *driver)
	case "migrate":
		if err := a.migrate(ctx); err != nil {
			return err
		}
		fmt.Fprintln(w, "migrated: idempotency_keys, River's tables, charges")
		return nil
	case "api":
		handler := a.api()
		if h.api != nil {
			handler = h.api(handler)
		}
		return serve(ctx, w, *addr, "api", handler)
	default: // worker
		wk, err := a.startWorker(ctx, workerConfig{
			Provider:    *providerURL,
			MaxWorkers:  *workers,
			JobTimeout:  *jobTimeout,
			RescueAfter: *rescueAfter,
			Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
			Middleware:  h.worker,
		})
		if err != nil {
			return err
		}
		fmt.Fprintln(w, "worker: working collect jobs")
		<-ctx.Done()
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return wk.stop(stopCtx)
	}
}

// serve serves handler on addr until ctx ends. Its first line of output
// says where it listens, which the fault test reads.
func serve(ctx context.Context, w io.Writer, addr, name string, handler http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(w, "%s: listening on http://%s\n", name, ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}
