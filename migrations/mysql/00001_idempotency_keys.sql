-- Keys and scopes are compared byte for byte (VARBINARY): a case-insensitive
-- collation would make "abc" and "ABC" one key. A row the claiming
-- transaction has not saved yet (failed = 2, a placeholder value; before
-- that, a NULL value) is seen by no other transaction.

-- +goose Up
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope       VARBINARY(255) NOT NULL,
    `key`       VARBINARY(255) NOT NULL,
    fingerprint BINARY(32)     NOT NULL,
    value       LONGBLOB       NULL,
    failed      BOOLEAN        NOT NULL DEFAULT FALSE,
    created_at  DATETIME(6)    NOT NULL,
    expires_at  DATETIME(6)    NOT NULL,
    PRIMARY KEY (scope, `key`),
    INDEX idempotency_keys_expires_at (expires_at)
) ENGINE = InnoDB;

-- +goose Down
DROP TABLE IF EXISTS idempotency_keys;
