// Command payments is a small charges API that uses httpadapter: POST
// /v1/charges with an Idempotency-Key runs once, however often it is
// retried, and GET /v1/charges/{id} reads a charge.
//
//	go run ./examples/payments                      # SQLite in payments.db
//	go run ./examples/payments -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
//	go run ./examples/payments -driver mysql -dsn 'root@tcp(127.0.0.1:3306)/test'
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"net/http"
	"time"

	_ "github.com/go-sql-driver/mysql" // mysql
	_ "github.com/jackc/pgx/v5/stdlib" // pgx
	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"  // postgres
	_ "modernc.org/sqlite" // sqlite

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/httpadapter"
	"github.com/exactlyonce/idempotency/migrations"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	driver := flag.String("driver", "sqlite", "database/sql driver: sqlite, postgres, pgx or mysql")
	dsn := flag.String("dsn", "file:payments.db?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate", "data source name")
	flag.Parse()

	db, err := sqlx.Open(*driver, *dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := setup(ctx, db); err != nil {
		log.Fatal(err)
	}
	h, err := newServer(db)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("payments: listening on http://%s", *addr)
	log.Fatal(http.ListenAndServe(*addr, h))
}

// setup applies the key table's migrations and creates the charges table.
func setup(ctx context.Context, db *sqlx.DB) error {
	if err := migrations.Up(ctx, db); err != nil {
		return err
	}
	_, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS charges (
		id       VARCHAR(40)  NOT NULL PRIMARY KEY,
		account  VARCHAR(255) NOT NULL,
		amount   BIGINT       NOT NULL,
		currency VARCHAR(3)   NOT NULL
	)`)
	return err
}

type charge struct {
	ID       string `json:"id" db:"id"`
	Account  string `json:"account" db:"account"`
	Amount   int64  `json:"amount" db:"amount"`
	Currency string `json:"currency" db:"currency"`
}

// account stands in for authentication: the caller's account, which is
// also the scope of its idempotency keys.
func account(r *http.Request) string {
	if a := r.Header.Get("X-Account"); a != "" {
		return a
	}
	return "demo"
}

// newServer returns the API's handler on db, which setup has prepared.
func newServer(db *sqlx.DB) (http.Handler, error) {
	store, err := idempotency.New(db)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/charges", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Amount   int64  `json:"amount"`
			Currency string `json:"currency"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Amount <= 0 || len(in.Currency) != 3 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want {\"amount\": a positive integer, \"currency\": a 3-letter code}"})
			return
		}
		c := charge{ID: newID(), Account: account(r), Amount: in.Amount, Currency: in.Currency}
		tx := httpadapter.Tx(r.Context()) // commits with the stored response
		if _, err := tx.NamedExecContext(r.Context(),
			`INSERT INTO charges (id, account, amount, currency) VALUES (:id, :account, :amount, :currency)`, c); err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "could not save the charge"})
			return
		}
		w.Header().Set("Location", "/v1/charges/"+c.ID)
		writeJSON(w, http.StatusCreated, c)
	})
	mux.HandleFunc("GET /v1/charges/{id}", func(w http.ResponseWriter, r *http.Request) {
		var c charge
		err := db.GetContext(r.Context(), &c, db.Rebind(`SELECT id, account, amount, currency FROM charges WHERE id = ? AND account = ?`),
			r.PathValue("id"), account(r))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such charge"})
		case err != nil:
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "could not read the charge"})
		default:
			writeJSON(w, http.StatusOK, c)
		}
	})
	return httpadapter.Middleware(store, httpadapter.WithScope(account))(mux), nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "ch_" + hex.EncodeToString(b)
}
