package chaos

// The drivers a worker may be asked to use.
import (
	_ "github.com/go-sql-driver/mysql" // mysql
	_ "github.com/jackc/pgx/v5/stdlib" // pgx
	_ "github.com/lib/pq"              // postgres
	_ "modernc.org/sqlite"             // sqlite
)
