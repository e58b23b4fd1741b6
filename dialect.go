package idempotency

import (
	"fmt"
	"strings"

	"github.com/exactlyonce/idempotency/dialects"
	// The dialects of this module register themselves for the
	// database/sql driver names they serve; New finds one by
	// db.DriverName().
	_ "github.com/exactlyonce/idempotency/dialects/mysql"
	_ "github.com/exactlyonce/idempotency/dialects/postgres"
	_ "github.com/exactlyonce/idempotency/dialects/sqlite"
)

// dialectFor picks the dialect registered for a driver name.
func dialectFor(driver, table string) (dialects.Dialect, error) {
	d, err := dialects.Open(driver, table)
	if err != nil {
		return nil, fmt.Errorf("idempotency: no dialect for driver %q: use one of %s, or pass WithDialect", driver, strings.Join(dialects.Drivers(), ", "))
	}
	return d, nil
}
