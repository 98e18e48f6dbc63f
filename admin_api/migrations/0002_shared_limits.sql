-- Rate limits shared by all keys of an organisation, or of one owner within it.

ALTER TABLE orgs ADD COLUMN rate_limits jsonb NOT NULL DEFAULT '[]'::jsonb;

CREATE TABLE owner_limits (
    org_id      text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    owner_id    text NOT NULL,
    rate_limits jsonb NOT NULL DEFAULT '[]'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, owner_id)
);
