-- The console's sessions: the browser holds only a random id (in an HttpOnly cookie); the
-- row says who logged in. Every request checks the credential again: for a root key, the
-- secret it logged in with must still open an active key (a rotation or revocation ends the
-- session); for the operator, the token must still be the configured one.
CREATE TABLE console_sessions (
    id_hash     bytea PRIMARY KEY,       -- SHA-256 of the cookie's id
    kind        text NOT NULL CHECK (kind IN ('operator', 'key')),
    secret_hash bytea NOT NULL,          -- SHA-256 of the operator token, or the key's hash
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
