package ginadapter_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/jmoiron/sqlx"
	_ "modernc.org/sqlite"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/ginadapter"
	"github.com/exactlyonce/idempotency/httpadapter"
	"github.com/exactlyonce/idempotency/migrations"
)

// The wrapped handler writes through the request's transaction; a retry
// with the same key gets the stored answer, and the charge is made once.
func Example() {
	dir, err := os.MkdirTemp("", "ginadapter-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db := sqlx.MustOpen("sqlite", "file:"+filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=immediate")
	defer db.Close()
	if err := migrations.Up(context.Background(), db); err != nil {
		log.Fatal(err)
	}
	db.MustExec(`CREATE TABLE charges (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)`)
	store, err := idempotency.New(db)
	if err != nil {
		log.Fatal(err)
	}

	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.POST("/charges", ginadapter.Wrap(store)(func(c *gin.Context) {
		res, err := ginadapter.Tx(c).ExecContext(c.Request.Context(), `INSERT INTO charges (amount) VALUES (1000)`)
		if err != nil {
			ginadapter.Fail(c, err)
			return
		}
		id, _ := res.LastInsertId()
		c.JSON(http.StatusCreated, gin.H{"id": id})
	}))
	srv := httptest.NewServer(r)
	defer srv.Close()

	for range 2 {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/charges", strings.NewReader(`{}`))
		req.Header.Set(httpadapter.KeyHeader, "order-1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, resp.Header.Get(httpadapter.ReplayedHeader), string(body))
	}
	var n int
	db.Get(&n, `SELECT COUNT(*) FROM charges`)
	fmt.Println("charges:", n)
	// Output:
	// 201  {"id":1}
	// 201 true {"id":1}
	// charges: 1
}
