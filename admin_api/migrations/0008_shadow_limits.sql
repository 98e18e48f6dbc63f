-- Shadow mode per key: its limits are measured and reported (RateLimit headers, the
-- console, keystile_shadow_limit_exceeded_total) but over-limit requests still pass — how an
-- operator tries a new limit on a live key before enforcing it.
ALTER TABLE keys ADD COLUMN shadow_limits boolean NOT NULL DEFAULT false;
