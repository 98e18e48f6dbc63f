-- The key store: organisations, keys, their hashed secrets, daily usage and the audit log.

CREATE TABLE orgs (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    provider_id  text NOT NULL UNIQUE,
    key_prefix   text NOT NULL,
    key_defaults jsonb NOT NULL DEFAULT '{}'::jsonb,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE keys (
    id           text PRIMARY KEY,
    serial       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    org_id       text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    owner_id     text,
    name         text NOT NULL DEFAULT '',
    environment  text NOT NULL DEFAULT 'production'
                 CHECK (environment IN ('production', 'staging', 'development')),
    root         boolean NOT NULL DEFAULT false,
    parent_id    text REFERENCES keys (id) ON DELETE SET NULL,
    scopes       text[] NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'revoked')),
    expires_at   timestamptz,
    usage_limit  bigint CHECK (usage_limit >= 0),
    usage_count  bigint NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    quota        jsonb,
    rate_limits  jsonb NOT NULL DEFAULT '[]'::jsonb,
    is_default   boolean NOT NULL DEFAULT false,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    prefix       text NOT NULL,  -- display prefix: the first 12 characters of the secret
    key_prefix   text NOT NULL,  -- the prefix new secrets of this key are generated under
    recoverable  boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX keys_org_serial ON keys (org_id, serial);
CREATE INDEX keys_org_owner ON keys (org_id, owner_id);
-- At most one default key per organisation and owner.
CREATE UNIQUE INDEX keys_one_default ON keys (org_id, owner_id) WHERE is_default;

-- Only SHA-256 digests are stored. A rotated-out secret keeps working until expires_at.
CREATE TABLE key_secrets (
    hash       bytea PRIMARY KEY CHECK (length(hash) = 32),
    key_id     text NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX key_secrets_key ON key_secrets (key_id);

CREATE TABLE key_usage_daily (
    key_id text NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    day    date NOT NULL,
    count  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);

-- Who changed what, when. Not foreign-keyed: the trail outlives deleted keys and orgs.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_type  text NOT NULL CHECK (actor_type IN ('operator', 'key', 'system')),
    actor_id    text,
    org_id      text,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    changes     jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_id  text
);
CREATE INDEX audit_log_org ON audit_log (org_id, id);
CREATE INDEX audit_log_target ON audit_log (target_id, id);
