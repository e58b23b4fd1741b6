package ginadapter

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/httpadapter"
	"github.com/exactlyonce/idempotency/internal/conformance"
	"github.com/exactlyonce/idempotency/internal/testdb"
	"github.com/exactlyonce/idempotency/internal/transfertest"
)

func init() { gin.SetMode(gin.TestMode) }

// backend returns the backend named name.
func backend(t testing.TB, name string) testdb.Backend {
	t.Helper()
	for _, b := range testdb.Backends() {
		if b.Name == name {
			return b
		}
	}
	t.Fatalf("no backend %q", name)
	return testdb.Backend{}
}

// bank is a fresh database with the transfer tables.
type bank struct {
	*conformance.SQLEnv
}

func openBank(t testing.TB, name string) bank {
	t.Helper()
	e := conformance.OpenSQL(t, backend(t, name))
	transfertest.Setup(t, e.DB)
	return bank{e}
}

func (b bank) store(t testing.TB, opts ...idempotency.Option) *idempotency.Store {
	t.Helper()
	s, err := idempotency.New(b.DB, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (b bank) count(t testing.TB, query string) int {
	t.Helper()
	return b.Count(t, query)
}

// transfer is the handler of POST /transfers: it moves the money through
// the request's transaction and answers 201 with the ref. before, if set,
// runs first in every attempt and may answer instead (returning false).
func transfer(postgres bool, before func(c *gin.Context, tx *sqlx.Tx) bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		var req transfertest.Request
		if err := c.ShouldBindJSON(&req); err != nil {
			c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"error": err.Error()})
			return
		}
		tx := Tx(c)
		if before != nil && !before(c, tx) {
			return
		}
		if err := transfertest.Move(c.Request.Context(), tx, postgres, req); err != nil {
			Fail(c, err)
			return
		}
		c.JSON(http.StatusCreated, transfertest.Answer{Ref: req.Ref})
	}
}

// router serves POST /transfers with handlers behind a middleware that
// sets the account from X-Account, as authentication would.
func router(t testing.TB, handlers ...gin.HandlerFunc) string {
	t.Helper()
	r := gin.New()
	r.Use(func(c *gin.Context) {
		c.Set("account", c.GetHeader("X-Account"))
		c.Next()
	})
	r.POST("/transfers", handlers...)
	r.GET("/transfers", handlers...)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv.URL
}

// naive is the middleware a new user writes around httpadapter: it runs
// the rest of Gin's chain with c.Next() in the middleware's handler. The
// tests show what it does when the handler runs a second time.
func naive(store *idempotency.Store) gin.HandlerFunc {
	mw := httpadapter.Middleware(store)
	return func(c *gin.Context) {
		out := c.Writer
		mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.Request = r
			c.Writer = newWriter(w)
			c.Next()
			c.Writer.WriteHeaderNow()
		})).ServeHTTP(out, c.Request)
		c.Writer = out
		c.Abort()
	}
}

func post(t testing.TB, url, key, body string, header ...string) transfertest.Reply {
	t.Helper()
	return transfertest.Send(t, http.MethodPost, url, key, body, header...)
}

// counter counts a handler's runs per ref.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) add(ref string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[ref]++
	return c.n[ref]
}
