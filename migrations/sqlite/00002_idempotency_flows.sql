-- Flows (idempotency.NewFlow): a running flow's row, owned under a lease
-- with a fencing token, and its recorded steps. A flow that finishes writes
-- its record into idempotency_keys and deletes both, so these tables hold
-- running and abandoned flows only, and idempotency_keys is unchanged.
-- Times are milliseconds since 1970.

-- +goose Up
CREATE TABLE IF NOT EXISTS idempotency_flows (
    scope       TEXT    NOT NULL,
    "key"       TEXT    NOT NULL,
    flow        TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    params      BLOB    NOT NULL,
    token       INTEGER NOT NULL,
    fence       INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER NOT NULL,
    resumes     INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, "key")
);
CREATE INDEX IF NOT EXISTS idempotency_flows_flow_lease ON idempotency_flows (flow, lease_until);
CREATE TABLE IF NOT EXISTS idempotency_steps (
    scope      TEXT    NOT NULL,
    "key"      TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (scope, "key", seq)
);

-- +goose Down
DROP TABLE IF EXISTS idempotency_steps;
DROP TABLE IF EXISTS idempotency_flows;
