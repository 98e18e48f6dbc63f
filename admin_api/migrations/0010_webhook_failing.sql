-- An endpoint's failing time now starts at its first failed attempt after the last success
-- (enabling it clears failing_since), so when it was last enabled is no longer needed.
ALTER TABLE webhook_endpoints DROP COLUMN enabled_at;
