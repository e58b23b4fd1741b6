-- The business table. sqlc reads this file to type the queries, and the
-- example applies it at start, so IF NOT EXISTS lets it run again on the
-- same database. The key table is not here: pgxstore.Up creates it.
CREATE TABLE IF NOT EXISTS charges (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer        TEXT        NOT NULL,
    -- Optional, but it lets support staff find the charge a request made.
    idempotency_key TEXT        NOT NULL,
    amount          BIGINT      NOT NULL, -- in cents
    currency        TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
