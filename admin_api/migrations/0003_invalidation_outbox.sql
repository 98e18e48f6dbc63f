-- Invalidations are written in the same transaction as the change they announce, and
-- delivered to Redis afterwards (retried until Redis takes them), so none is ever lost.

CREATE TABLE invalidation_outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('key', 'org', 'none')),
    ident      text NOT NULL,
    hashes     bytea[] NOT NULL DEFAULT '{}',
    redis_keys text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
