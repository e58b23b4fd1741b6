package idempotency

import (
	"fmt"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/dialects/mysql"
	"github.com/exactlyonce/idempotency/dialects/postgres"
	"github.com/exactlyonce/idempotency/dialects/sqlite"
)

// dialectFor picks the dialect for a driver name.
func dialectFor(driver, table string) (dialects.Dialect, error) {
	kind, _ := dialects.Kind(driver)
	switch kind {
	case "postgres":
		return postgres.New(table), nil
	case "mysql":
		return mysql.New(table), nil
	case "sqlite":
		return sqlite.New(table), nil
	}
	return nil, fmt.Errorf("idempotency: no dialect for driver %q: use postgres, pgx, mysql, sqlite or sqlite3, or pass WithDialect", driver)
}
