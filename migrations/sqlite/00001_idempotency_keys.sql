-- Times are milliseconds since 1970 (SQLite has no time type). value is NULL
-- only while the claiming transaction runs.

-- +goose Up
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope       TEXT    NOT NULL,
    "key"       TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    value       BLOB,
    failed      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, "key")
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expires_at ON idempotency_keys (expires_at);

-- +goose Down
DROP TABLE IF EXISTS idempotency_keys;
