package pgxstore_test

import (
	"context"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/httpadapter"
	"github.com/exactlyonce/idempotency/pgxstore"
)

type Charge struct {
	ID     int64 `json:"id"`
	Amount int64 `json:"amount"`
}

// The store on a pgx pool: fn writes through the call's pgx.Tx, and the
// key commits with it. (A Postgres server is needed to run it.)
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := pgxstore.Up(ctx, pool); err != nil {
		log.Fatal(err)
	}
	store, err := pgxstore.New(pool, idempotency.WithTTL(24*time.Hour))
	if err != nil {
		log.Fatal(err)
	}

	req := struct{ Amount int64 }{Amount: 1000}
	charge, err := idempotency.Do(ctx, store.Scope("acct_42"), "order-7-charge", req,
		func(ctx context.Context, tx pgx.Tx) (Charge, error) {
			c := Charge{Amount: req.Amount}
			err := tx.QueryRow(ctx, `INSERT INTO charges (amount) VALUES ($1) RETURNING id`, req.Amount).Scan(&c.ID)
			return c, err
		})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("charge %d", charge.ID)
}

// Behind the HTTP middleware, a handler writes through the request's
// pgx.Tx, which TxFrom returns.
func Example_http() {
	pool, err := pgxpool.New(context.Background(), os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	store, err := pgxstore.New(pool)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /charges", func(w http.ResponseWriter, r *http.Request) {
		tx := httpadapter.TxFrom[pgx.Tx](r.Context())
		if _, err := tx.Exec(r.Context(), `INSERT INTO charges (amount) VALUES (1000)`); err != nil {
			http.Error(w, "could not charge", http.StatusInternalServerError) // rolls back
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	log.Fatal(http.ListenAndServe(":8080", httpadapter.MiddlewareFor(store)(mux)))
}
