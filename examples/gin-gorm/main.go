// Command gin-gorm is a money-transfer service on Gin and GORM whose
// transfers run exactly once per Idempotency-Key: the handler moves the
// money through GORM in the request's transaction (ginadapter.Wrap,
// gormadapter.Bind), which also stores its answer. It starts the service,
// then plays a client: a transfer, its retry (replayed), two concurrent
// twins (one transfer), the same key with another amount (422), and a
// transfer that overdraws (409, nothing moved), and prints the balances.
//
// It needs no server: by default it runs on an embedded SQLite database in
// a temporary file. Point it at a server with -driver and -dsn:
//
//	go run ./examples/gin-gorm
//	go run ./examples/gin-gorm -driver pgx -dsn 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/gin-gonic/gin"
	"github.com/jmoiron/sqlx"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/exactlyonce/idempotency/examples/internal/exampledb"
	"github.com/exactlyonce/idempotency/ginadapter"
	"github.com/exactlyonce/idempotency/gormadapter"
	"github.com/exactlyonce/idempotency/httpadapter"
)

func main() { exampledb.Main("gin-gorm", run) }

// Account and Transfer are the service's GORM models.
type Account struct {
	ID      string `gorm:"primaryKey;size:40"`
	Owner   string `gorm:"size:40;not null"`
	Balance int64  `gorm:"not null"`
}

type Transfer struct {
	ID     string `gorm:"primaryKey;size:40" json:"id"`
	FromID string `gorm:"size:40;not null" json:"from"`
	ToID   string `gorm:"size:40;not null" json:"to"`
	Amount int64  `gorm:"not null" json:"amount"`
}

// TransferRequest is what the client sends.
type TransferRequest struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Amount int64  `json:"amount"`
}

var errOverdrawn = errors.New("insufficient funds")

// service is the HTTP API: POST /transfers behind ginadapter.
func service(gdb *gorm.DB) (http.Handler, error) {
	store, err := gormadapter.New(gdb)
	if err != nil {
		return nil, err
	}
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.Use(func(c *gin.Context) { // stands for authentication
		c.Set("owner", c.GetHeader("X-Owner"))
		c.Next()
	})
	idem := ginadapter.Wrap(store, ginadapter.WithScope(func(c *gin.Context) string { return c.GetString("owner") }))
	r.POST("/transfers", idem(func(c *gin.Context) {
		var req TransferRequest
		if err := c.ShouldBindJSON(&req); err != nil || req.Amount <= 0 {
			c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"error": "want from, to and a positive amount"})
			return
		}
		// The request's transaction, as GORM: callbacks and hooks run.
		tx := gormadapter.Bind(c.Request.Context(), gdb, ginadapter.TxFrom[*sql.Tx](c))
		t, err := move(tx, c.GetString("owner"), req)
		switch {
		case errors.Is(err, errOverdrawn):
			// Not stored (409): rolled back; a retry may succeed later.
			c.AbortWithStatusJSON(http.StatusConflict, gin.H{"error": err.Error()})
		case err != nil:
			ginadapter.Fail(c, err) // a serialization failure runs the handler again
		default:
			c.JSON(http.StatusCreated, t)
		}
	}))
	return r, nil
}

// move debits the owner's account and credits the other, through tx.
func move(tx *gorm.DB, owner string, req TransferRequest) (Transfer, error) {
	res := tx.Model(&Account{}).
		Where("id = ? AND owner = ? AND balance >= ?", req.From, owner, req.Amount).
		Update("balance", gorm.Expr("balance - ?", req.Amount))
	if res.Error != nil {
		return Transfer{}, res.Error
	}
	if res.RowsAffected == 0 {
		return Transfer{}, errOverdrawn
	}
	if err := tx.Model(&Account{}).Where("id = ?", req.To).
		Update("balance", gorm.Expr("balance + ?", req.Amount)).Error; err != nil {
		return Transfer{}, err
	}
	t := Transfer{ID: exampledb.NewID("tr_"), FromID: req.From, ToID: req.To, Amount: req.Amount}
	return t, tx.Create(&t).Error
}

func run(ctx context.Context, w io.Writer, db *sqlx.DB) error {
	gdb, err := openGORM(db)
	if err != nil {
		return err
	}
	if err := gormadapter.Up(ctx, gdb); err != nil { // the key table
		return err
	}
	if err := gdb.WithContext(ctx).AutoMigrate(&Account{}, &Transfer{}); err != nil {
		return err
	}
	owner := exampledb.NewID("own_") // a new owner per run keeps reruns on one -dsn apart
	alice, bob := Account{ID: exampledb.NewID("acc_"), Owner: owner, Balance: 100}, Account{ID: exampledb.NewID("acc_"), Owner: "bob", Balance: 0}
	if err := gdb.WithContext(ctx).Create([]*Account{&alice, &bob}).Error; err != nil {
		return err
	}
	h, err := service(gdb)
	if err != nil {
		return err
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	send := func(key string, amount int64) (int, string, bool, error) {
		body, _ := json.Marshal(TransferRequest{From: alice.ID, To: bob.ID, Amount: amount})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/transfers", bytes.NewReader(body))
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
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b)), resp.Header.Get(httpadapter.ReplayedHeader) == "true", err
	}
	say := func(step, key string, amount int64) (string, error) {
		status, body, replayed, err := send(key, amount)
		if err != nil {
			return "", err
		}
		id := ""
		var t Transfer
		if json.Unmarshal([]byte(body), &t) == nil {
			id = t.ID
		}
		fmt.Fprintf(w, "%s key %s, $%d: %d (replayed=%t) %s\n", step, key, amount, status, replayed, short(body))
		return id, nil
	}

	fmt.Fprintf(w, "Transfers from %s (owner %s, $100) to %s on %s, through Gin and GORM.\n", alice.ID, owner, bob.ID, gdb.Dialector.Name())
	first, err := say("1.", "t-1", 30)
	if err != nil {
		return err
	}
	again, err := say("2. retry", "t-1", 30)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   same transfer both times: %t\n", first != "" && first == again)

	// Twins: two concurrent requests with one key; one transfer.
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

	var transfers int64
	if err := gdb.WithContext(ctx).Model(&Transfer{}).Where("from_id = ?", alice.ID).Count(&transfers).Error; err != nil {
		return err
	}
	if err := gdb.WithContext(ctx).Find(&alice, "id = ?", alice.ID).Error; err != nil {
		return err
	}
	if err := gdb.WithContext(ctx).Find(&bob, "id = ?", bob.ID).Error; err != nil {
		return err
	}
	fmt.Fprintf(w, "Balances: %s $%d, %s $%d; transfers made: %d (money moved once per key)\n", alice.ID, alice.Balance, bob.ID, bob.Balance, transfers)
	return nil
}

// short cuts a long problem+json body to its type.
func short(body string) string {
	var p struct {
		Type  string `json:"type"`
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(body), &p) == nil && p.Type != "" {
		return "problem " + p.Type[strings.LastIndexAny(p.Type, "/#")+1:]
	}
	if p.Error != "" {
		return p.Error
	}
	return body
}

// openGORM opens GORM on the example's database, with the dialector of its
// driver.
func openGORM(db *sqlx.DB) (*gorm.DB, error) {
	var d gorm.Dialector
	switch db.DriverName() {
	case "sqlite":
		d = sqlite.Dialector{Conn: db.DB}
	case "postgres", "pgx":
		d = postgres.New(postgres.Config{Conn: db.DB})
	case "mysql":
		d = mysql.New(mysql.Config{Conn: db.DB})
	default:
		return nil, fmt.Errorf("no GORM dialector for driver %q", db.DriverName())
	}
	return gorm.Open(d, &gorm.Config{PrepareStmt: true, Logger: logger.Discard})
}
