-- name: CreateCharge :one
INSERT INTO charges (customer, idempotency_key, amount, currency)
VALUES ($1, $2, $3, $4)
RETURNING *;

-- name: GetCharge :one
SELECT * FROM charges
WHERE id = $1;

-- name: CountChargesByKey :one
SELECT count(*) FROM charges
WHERE customer = $1 AND idempotency_key = $2;
