-- Webhooks: the endpoints an organisation registers, the events it is told about, and one
-- delivery per event and endpoint. Events are a transactional outbox: each is written in the
-- same transaction as the change that causes it, with its deliveries, and sent afterwards.

-- Per organisation: when to warn before a key expires, and at which share of a quota or of
-- the lifetime usage_limit (see admin_api.models.Notifications for the defaults).
ALTER TABLE orgs ADD COLUMN notifications jsonb NOT NULL DEFAULT '{}'::jsonb;

CREATE TABLE webhook_endpoints (
    id                  text PRIMARY KEY,
    org_id              text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    url                 text NOT NULL,
    events              text[] NOT NULL,
    description         text NOT NULL DEFAULT '',
    enabled             boolean NOT NULL DEFAULT true,
    disabled_reason     text,
    -- When it was last enabled: failures before it no longer count towards disabling it.
    enabled_at          timestamptz NOT NULL DEFAULT now(),
    -- The signing secret: AES-GCM sealed when KEYSTILE_ENCRYPTION_KEY is set, else plain.
    secret              bytea NOT NULL,
    secret_sealed       boolean NOT NULL,
    -- After a roll, the previous secret signs too until previous_expires_at.
    previous_secret     bytea,
    previous_sealed     boolean,
    previous_expires_at timestamptz,
    -- When the first failed attempt since the last success happened.
    failing_since       timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id, created_at);

-- Not foreign-keyed to keys: an event about a key outlives the key.
CREATE TABLE webhook_events (
    id         text PRIMARY KEY,
    org_id     text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    key_id     text,
    type       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX webhook_events_created ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id              text PRIMARY KEY,
    -- Creation order: one endpoint's deliveries about one key go out in this order.
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    event_id        text NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id     text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    -- The key the event is about. Only the earliest pending delivery of an endpoint and key
    -- is due; the ones behind it wait with next_attempt_at 'infinity' until it finishes.
    ordering        text NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A sender that claimed the delivery owns it until then (it may have died).
    leased_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (endpoint_id, ordering, seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, seq);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
-- Deliveries in flight (leased), per endpoint: few rows, read by every claim.
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (endpoint_id)
    WHERE leased_until IS NOT NULL AND state = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id text NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    n           integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status_code integer,
    error       text,
    latency_ms  double precision NOT NULL,
    PRIMARY KEY (delivery_id, n)
);

-- Occurrences already announced (an expiry warning, a threshold in a period): the primary
-- key makes each fire once, however many instances look at the same time.
CREATE TABLE webhook_marks (
    key_id     text NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    occurrence text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, occurrence)
);
CREATE INDEX webhook_marks_created ON webhook_marks (created_at);

-- The expiry scheduler reads keys by when they expire.
CREATE INDEX keys_expiry ON keys (expires_at) WHERE expires_at IS NOT NULL;
