-- Flows (idempotency.NewFlow): a running flow's row, owned under a lease
-- with a fencing token, and its recorded steps. A flow that finishes writes
-- its record into idempotency_keys and deletes both, so these tables hold
-- running and abandoned flows only, and idempotency_keys is unchanged.

-- +goose Up
CREATE TABLE IF NOT EXISTS idempotency_flows (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    flow        text        NOT NULL,
    fingerprint bytea       NOT NULL,
    params      bytea       NOT NULL,
    token       bigint      NOT NULL,
    fence       bigint NOT NULL DEFAULT 0,
    lease_until timestamptz NOT NULL,
    resumes     integer     NOT NULL DEFAULT 0,
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_flows_flow_lease ON idempotency_flows (flow, lease_until);
CREATE TABLE IF NOT EXISTS idempotency_steps (
    scope      text        NOT NULL,
    key        text        NOT NULL,
    seq        integer     NOT NULL,
    name       text        NOT NULL,
    value      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key, seq)
);

-- +goose Down
DROP TABLE IF EXISTS idempotency_steps;
DROP TABLE IF EXISTS idempotency_flows;
