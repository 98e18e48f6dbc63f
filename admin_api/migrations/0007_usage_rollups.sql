-- What happened to each key's requests over time, for the console's charts and the "limited
-- now" view: per minute (kept 2 days) and per hour (kept 40 days), by the HTTP status the
-- client got and the gateway's refusal code ('' when the request was forwarded) — per key,
-- and summed per organisation so an organisation-wide chart reads one row per step. Every
-- gateway process adds its counts behind, after the usage flush (gateway/rollups.py); the
-- organisation and owner of a key's rows are those it had when they were written. No
-- foreign keys: a deleted key's history still counts for its organisation, and an
-- organisation's rows go with it (admin_api/repository/orgs.py) or with age.
CREATE TABLE usage_minutes (
    bucket   timestamptz NOT NULL,
    key_id   text NOT NULL,
    org_id   text NOT NULL,
    owner_id text,
    status   smallint NOT NULL,
    code     text NOT NULL,
    count    bigint NOT NULL,
    PRIMARY KEY (key_id, bucket, status, code)
);
CREATE INDEX usage_minutes_owner ON usage_minutes (org_id, owner_id, bucket);
CREATE INDEX usage_minutes_bucket ON usage_minutes (bucket);
CREATE TABLE usage_hours (LIKE usage_minutes INCLUDING ALL);

CREATE TABLE usage_org_minutes (
    bucket   timestamptz NOT NULL,
    org_id   text NOT NULL,
    status   smallint NOT NULL,
    code     text NOT NULL,
    count    bigint NOT NULL,
    PRIMARY KEY (org_id, bucket, status, code)
);
CREATE INDEX usage_org_minutes_bucket ON usage_org_minutes (bucket);
CREATE TABLE usage_org_hours (LIKE usage_org_minutes INCLUDING ALL);
