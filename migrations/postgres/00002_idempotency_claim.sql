-- idempotency_claim takes the key's advisory lock and then reads its live
-- row, in one round trip. Being VOLATILE PL/pgSQL, under READ COMMITTED its
-- SELECT runs with a snapshot taken after the lock, so a twin that committed
-- just before the lock came free is seen and replayed (a single SQL statement
-- would read with a snapshot taken before the lock, and run fn in vain).
--
-- Under REPEATABLE READ and SERIALIZABLE the transaction's snapshot is older
-- than the lock. There, when it holds the lock and sees no row, it probes
-- with an INSERT … ON CONFLICT DO NOTHING that it undoes at once: a row
-- committed after the snapshot makes that INSERT fail with 40001, so the
-- attempt is retried (and replays) before fn runs.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION idempotency_claim(p_lock bigint, p_scope text, p_key text,
    OUT locked boolean, OUT fingerprint bytea, OUT value bytea, OUT failed boolean)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    locked := pg_try_advisory_xact_lock(p_lock);
    SELECT k.fingerprint, k.value, k.failed INTO fingerprint, value, failed
    FROM idempotency_keys AS k
    WHERE k.scope = p_scope AND k.key = p_key AND k.expires_at > now();
    IF locked AND fingerprint IS NULL AND current_setting('transaction_isolation') <> 'read committed' THEN
        BEGIN
            INSERT INTO idempotency_keys (scope, key, fingerprint, value, failed, created_at, expires_at)
            VALUES (p_scope, p_key, '\x', '\x', false, now(), now())
            ON CONFLICT (scope, key) DO NOTHING;
            RAISE SQLSTATE 'IDPRB'; -- undo the probe
        EXCEPTION WHEN SQLSTATE 'IDPRB' THEN
            NULL;
        END;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION IF EXISTS idempotency_claim(bigint, text, text);
