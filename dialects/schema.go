package dialects

import (
	"context"
	"database/sql"
)

// Schema is what a dialect knows about its database beyond the key
// protocol: how the migrations package applies its goose files (the folder
// migrations/<Name()>), and what tools that read the key table, such as
// the idempotency command, need to say about it. The dialects of this
// module implement it; a Dialect given to idempotency.WithDialect need not.
type Schema interface {
	Dialect

	// GooseDialect is goose's name for the database (a goose.Dialect).
	GooseDialect() string

	// MigrationLock returns the database-wide lock migrations.Up holds
	// while it migrates, so that instances that start together migrate
	// one after the other.
	MigrationLock() SessionLocker

	// MigrationRace reports whether err, from migrating, comes from
	// processes setting up a new database at the same moment, and passes
	// on another try.
	MigrationRace(err error) bool

	// Hint says what to do about an error of the migrations, or is "".
	Hint(err error) string

	// MissingTable reports whether err says that the key table, or the
	// schema or database named for it, does not exist.
	MissingTable(err error) bool

	// AgeSQL returns two SQL expressions over a row of the key table, by
	// the database's clock: the row's age in seconds, and whether it has
	// expired.
	AgeSQL() (age, expired string)
}

// SessionLocker is a lock held by one connection, with the methods of
// goose's lock.SessionLocker, so that a dialect need not import goose.
type SessionLocker interface {
	SessionLock(ctx context.Context, conn *sql.Conn) error
	SessionUnlock(ctx context.Context, conn *sql.Conn) error
}
