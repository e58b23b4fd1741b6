// Command echo-bun is a money-transfer service on Echo and bun whose
// transfers run exactly once per Idempotency-Key: the handler moves the
// money with bun queries sent in the request's transaction (.Conn(tx)),
// which also stores its answer (echoadapter.Middleware). It starts the
// service, then plays a client: a transfer, its retry (replayed), two
// concurrent twins (one transfer), the same key with another amount (422),
// and a transfer that overdraws (409, nothing moved), and prints the
// balances.
//
// It needs no server: by default it runs on an embedded SQLite database in
// a temporary file. Point it at a server with -driver and -dsn:
//
//	go run ./examples/echo-bun
//	go run ./examples/echo-bun -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/jmoiron/sqlx"
	"github.com/labstack/echo/v4"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/mysqldialect"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"github.com/uptrace/bun/schema"

	"github.com/exactlyonce/idempotency/bunadapter"
	"github.com/exactlyonce/idempotency/echoadapter"
	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/httpadapter"
)

func main() { exampledb.Main("echo-bun", run) }

// Account and Transfer are the service's bun models.
type Account struct {
	bun.BaseModel `bun:"table:accounts"`
	ID            string `bun:"id,pk,type:varchar(40)"`
	Owner         string `bun:"owner,type:varchar(40),notnull"`
	Balance       int64  `bun:"balance,notnull"`
}

type Transfer struct {
	bun.BaseModel `bun:"table:transfers"`
	ID            string `bun:"id,pk,type:varchar(40)" json:"id"`
	FromID        string `bun:"from_id,type:varchar(40),notnull" json:"from"`
	ToID          string `bun:"to_id,type:varchar(40),notnull" json:"to"`
	Amount        int64  `bun:"amount,notnull" json:"amount"`
}

// TransferRequest is what the client sends.
type TransferRequest struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Amount int64  `json:"amount"`
}

// service is the HTTP API: POST /transfers behind echoadapter.
func service(db *bun.DB) (http.Handler, error) {
	store, err := bunadapter.New(db)
	if err != nil {
		return nil, err
	}
	e := echo.New()
	e.HideBanner = true
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc { // stands for authentication
		return func(c echo.Context) error {
			c.Set("owner", c.Request().Header.Get("X-Owner"))
			return next(c)
		}
	})
	e.Use(echoadapter.Middleware(store, echoadapter.WithScope(func(c echo.Context) string {
		owner, _ := c.Get("owner").(string)
		return owner
	})))
	e.POST("/transfers", func(c echo.Context) error {
		var req TransferRequest
		if err := c.Bind(&req); err != nil || req.Amount <= 0 {
			return echo.NewHTTPError(http.StatusBadRequest, "want from, to and a positive amount")
		}
		ctx, tx := c.Request().Context(), echoadapter.TxFrom[*sql.Tx](c)
		owner, _ := c.Get("owner").(string)
		res, err := db.NewUpdate().Model((*Account)(nil)).Conn(tx).
			Set("balance = balance - ?", req.Amount).
			Where("id = ? AND owner = ? AND balance >= ?", req.From, owner, req.Amount).Exec(ctx)
		if err != nil {
			return err // rolled back; a serialization failure runs the handler again
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			// Answered by Echo inside the attempt: rolled back, not stored.
			return echo.NewHTTPError(http.StatusConflict, "insufficient funds")
		}
		if _, err := db.NewUpdate().Model((*Account)(nil)).Conn(tx).
			Set("balance = balance + ?", req.Amount).Where("id = ?", req.To).Exec(ctx); err != nil {
			return err
		}
		t := Transfer{ID: exampledb.NewID("tr_"), FromID: req.From, ToID: req.To, Amount: req.Amount}
		if _, err := db.NewInsert().Model(&t).Conn(tx).Exec(ctx); err != nil {
			return err
		}
		return c.JSON(http.StatusCreated, t)
	})
	return e, nil
}

func run(ctx context.Context, w io.Writer, sqldb *sqlx.DB) error {
	db, err := openBun(sqldb)
	if err != nil {
		return err
	}
	if err := bunadapter.Up(ctx, db); err != nil { // the key table
		return err
	}
	for _, m := range []any{(*Account)(nil), (*Transfer)(nil)} {
		if _, err := db.NewCreateTable().Model(m).IfNotExists().Exec(ctx); err != nil {
			return err
		}
	}
	owner := exampledb.NewID("own_") // a new owner per run keeps reruns on one -dsn apart
	alice := Account{ID: exampledb.NewID("acc_"), Owner: owner, Balance: 100}
	bob := Account{ID: exampledb.NewID("acc_"), Owner: "bob"}
	if _, err := db.NewInsert().Model(&[]Account{alice, bob}).Exec(ctx); err != nil {
		return err
	}
	h, err := service(db)
	if err != nil {
		return err
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	send := func(key string, amount int64) (status int, body string, replayed bool, err error) {
		b, _ := json.Marshal(TransferRequest{From: alice.ID, To: bob.ID, Amount: amount})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/transfers", bytes.NewReader(b))
		if err != nil {
			return 0, "", false, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Owner", owner)
		req.Header.Set(httpadapter.KeyHeader, key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", false, err
		}
		defer resp.Body.Close()
		b, err = io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b)), resp.Header.Get(httpadapter.ReplayedHeader) == "true", err
	}
	say := func(step, key string, amount int64) (string, error) {
		status, body, replayed, err := send(key, amount)
		if err != nil {
			return "", err
		}
		var t Transfer
		_ = json.Unmarshal([]byte(body), &t)
		fmt.Fprintf(w, "%s key %s, $%d: %d (replayed=%t) %s\n", step, key, amount, status, replayed, short(body))
		return t.ID, nil
	}

	fmt.Fprintf(w, "Transfers from %s (owner %s, $100) to %s on %s, through Echo and bun.\n", alice.ID, owner, bob.ID, db.Dialect().Name())
	first, err := say("1.", "t-1", 30)
	if err != nil {
		return err
	}
	again, err := say("2. retry", "t-1", 30)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   same transfer both times: %t\n", first != "" && first == again)

	var wg sync.WaitGroup
	statuses := make([]int, 2)
	for i := range statuses {
		wg.Go(func() { statuses[i], _, _, _ = send("t-2", 20) })
	}
	wg.Wait()
	fmt.Fprintf(w, "3. twins, key t-2, $20: %d and %d\n", statuses[0], statuses[1])

	if _, err := say("4. reused", "t-1", 99); err != nil {
		return err
	}
	if _, err := say("5. overdraw", "t-3", 500); err != nil {
		return err
	}

	transfers, err := db.NewSelect().Model((*Transfer)(nil)).Where("from_id = ?", alice.ID).Count(ctx)
	if err != nil {
		return err
	}
	if err := db.NewSelect().Model(&alice).WherePK().Scan(ctx); err != nil {
		return err
	}
	if err := db.NewSelect().Model(&bob).WherePK().Scan(ctx); err != nil {
		return err
	}
	fmt.Fprintf(w, "Balances: %s $%d, %s $%d; transfers made: %d (money moved once per key)\n", alice.ID, alice.Balance, bob.ID, bob.Balance, transfers)
	return nil
}

// short cuts a problem+json body to its type, and Echo's error to its
// message.
func short(body string) string {
	var p struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	if json.Unmarshal([]byte(body), &p) == nil {
		switch {
		case p.Type != "":
			return "problem " + p.Type[strings.LastIndexAny(p.Type, "/#")+1:]
		case p.Message != "":
			return p.Message
		}
	}
	return body
}

// openBun opens bun on the example's database, with the dialect of its
// driver.
func openBun(db *sqlx.DB) (*bun.DB, error) {
	var d schema.Dialect
	switch db.DriverName() {
	case "sqlite":
		d = sqlitedialect.New()
	case "postgres", "pgx":
		d = pgdialect.New()
	case "mysql":
		d = mysqldialect.New()
	default:
		return nil, fmt.Errorf("no bun dialect for driver %q", db.DriverName())
	}
	return bun.NewDB(db.DB, d), nil
}
