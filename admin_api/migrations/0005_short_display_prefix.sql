-- Display prefixes reveal at most 4 characters of a secret (they showed the first 12
-- characters of the raw key: 12 of an Open Dental CustomerKey's 16). keys.prefix is only
-- shown, never looked up, so shortening it changes no behaviour. The audit trail kept a copy
-- of it in every key.create entry; that copy is shortened too.

CREATE FUNCTION pg_temp.short_display_prefix(shown text, key_prefix text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        -- A canonical key: its public prefix, '_', then 4 characters of the secret.
        WHEN key_prefix IS NOT NULL AND starts_with(shown, key_prefix || '_')
            THEN left(shown, length(key_prefix) + 5)
        -- The public prefix was long enough that no secret was shown.
        WHEN key_prefix IS NOT NULL AND starts_with(key_prefix || '_', shown) THEN shown
        -- No prefix at all (an Open Dental CustomerKey).
        WHEN position('_' IN shown) = 0 THEN left(shown, 4)
        -- Unknown public prefix: keep up to the last '_' and 4 characters after it.
        ELSE regexp_replace(shown, '^(.*_[0-9A-Za-z]{0,4})[0-9A-Za-z]*$', '\1')
    END
$$;

UPDATE keys SET prefix = pg_temp.short_display_prefix(prefix, key_prefix)
WHERE prefix IS DISTINCT FROM pg_temp.short_display_prefix(prefix, key_prefix);

UPDATE audit_log AS a
SET changes = jsonb_set(a.changes, '{prefix}', to_jsonb(pg_temp.short_display_prefix(
    a.changes ->> 'prefix', (SELECT k.key_prefix FROM keys AS k WHERE k.id = a.target_id))))
WHERE a.target_type = 'key' AND jsonb_typeof(a.changes -> 'prefix') = 'string';

DROP FUNCTION pg_temp.short_display_prefix(text, text);
