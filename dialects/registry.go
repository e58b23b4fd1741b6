package dialects

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

var registry struct {
	sync.RWMutex
	open map[string]func(table string) Dialect
}

// Register makes a dialect available under a database/sql driver name, as
// sql.Register makes a driver available: idempotency.New and the
// migrations package find it from db.DriverName(). The dialect packages of
// this module register themselves from init for the driver names they
// serve; register a dialect for a driver known under another name the same
// way. open returns the dialect for the key table it is given. Register
// panics when open is nil or driverName already has a dialect.
func Register(driverName string, open func(table string) Dialect) {
	registry.Lock()
	defer registry.Unlock()
	if open == nil {
		panic("dialects: Register of " + driverName + " with a nil open function")
	}
	if _, dup := registry.open[driverName]; dup {
		panic("dialects: Register called twice for driver " + driverName)
	}
	if registry.open == nil {
		registry.open = make(map[string]func(string) Dialect)
	}
	registry.open[driverName] = open
}

// Open returns the dialect registered for a database/sql driver name, for
// the key table named table (DefaultTable, or a safe identifier, optionally
// schema-qualified).
func Open(driverName, table string) (Dialect, error) {
	registry.RLock()
	open := registry.open[driverName]
	registry.RUnlock()
	if open == nil {
		return nil, fmt.Errorf("no dialect for driver %q: dialects are registered for %s; register one (dialects.Register) or pass idempotency.WithDialect",
			driverName, strings.Join(Drivers(), ", "))
	}
	return open(table), nil
}

// Drivers returns the sorted database/sql driver names that have a
// dialect.
func Drivers() []string {
	registry.RLock()
	defer registry.RUnlock()
	return slices.Sorted(maps.Keys(registry.open))
}
