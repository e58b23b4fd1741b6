-- Flows (idempotency.NewFlow): a running flow's row, owned under a lease
-- with a fencing token, and its recorded steps. A flow that finishes writes
-- its record into idempotency_keys and deletes both, so these tables hold
-- running and abandoned flows only, and idempotency_keys is unchanged.

-- +goose Up
CREATE TABLE IF NOT EXISTS idempotency_flows (
    scope       VARBINARY(255) NOT NULL,
    `key`       VARBINARY(255) NOT NULL,
    flow        VARBINARY(255) NOT NULL,
    fingerprint BINARY(32)     NOT NULL,
    params      LONGBLOB       NOT NULL,
    token       BIGINT         NOT NULL,
    fence       BIGINT NOT NULL DEFAULT 0,
    lease_until DATETIME(6)    NOT NULL,
    resumes     INT            NOT NULL DEFAULT 0,
    last_error  TEXT           NULL,
    created_at  DATETIME(6)    NOT NULL,
    PRIMARY KEY (scope, `key`),
    INDEX idempotency_flows_flow_lease (flow, lease_until)
) ENGINE = InnoDB;
CREATE TABLE IF NOT EXISTS idempotency_steps (
    scope      VARBINARY(255) NOT NULL,
    `key`      VARBINARY(255) NOT NULL,
    seq        INT            NOT NULL,
    name       VARBINARY(255) NOT NULL,
    value      LONGBLOB       NOT NULL,
    created_at DATETIME(6)    NOT NULL,
    PRIMARY KEY (scope, `key`, seq)
) ENGINE = InnoDB;

-- +goose Down
DROP TABLE IF EXISTS idempotency_steps;
DROP TABLE IF EXISTS idempotency_flows;
