"""The expiry scheduler: ``key.expiring`` ahead of a key's expiry, ``key.expired`` after it.

Every admin instance runs it. A scan takes a transaction-scoped advisory lock when it can
(instances that cannot skip the round), and each occurrence — this key, this expiry time,
this lead time — is written to ``webhook_marks`` in the same statement that finds it, so even
two scans at once announce it once. A key well inside several lead times (created with three
days to live, with warnings at 7 days and 1 day) is warned once, at the shortest lead it is
inside; changing ``expires_at`` makes a new occurrence.

Each round then drops finished deliveries (and their events) older than ``retention_s``, and
marks no longer needed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

import asyncpg

from gateway import events
from gateway.database import Connection
from gateway.settings import WebhookSettings

log = logging.getLogger(__name__)

LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('keystile webhook expiry', 0))"
# Keys expired within the last week are still announced after an outage of every instance.
EXPIRED_LOOKBACK_S = 7 * 86400
BATCH = 1000
# The longest lead time any organisation with an endpoint for expiry events asked for.
LONGEST_LEAD = """SELECT max(l.v::bigint) FROM orgs o
CROSS JOIN LATERAL jsonb_array_elements_text(
    COALESCE(o.notifications -> 'expiring_before_s', $1::jsonb)) AS l(v)
WHERE EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.org_id = o.id AND w.enabled
              AND w.events && ARRAY['key.expiring', 'key.expired'])"""
# Occurrences due now and not yet announced, marked as announced in the same statement.
DUE = """WITH due AS MATERIALIZED (  -- lead_s computed once per key
    SELECT k.id, k.org_id, k.owner_id, k.name, k.prefix, k.expires_at,
        CASE WHEN k.expires_at > now() THEN (
            SELECT min(l.v::bigint) FROM jsonb_array_elements_text(
                COALESCE(o.notifications -> 'expiring_before_s', $1::jsonb)) AS l(v)
            WHERE k.expires_at - make_interval(secs => l.v::bigint) <= now()) END AS lead_s
    FROM keys k JOIN orgs o ON o.id = k.org_id
    WHERE k.expires_at > now() - make_interval(secs => $2)
      AND k.expires_at <= now() + make_interval(secs => $3)
      AND k.status <> 'revoked'
      AND EXISTS (SELECT 1 FROM webhook_endpoints w
                  WHERE w.org_id = k.org_id AND w.enabled AND w.created_at < k.expires_at
                    AND w.events && ARRAY['key.expiring', 'key.expired'])
), named AS (
    SELECT due.*, CASE WHEN lead_s IS NULL THEN 'expired:' ELSE 'expiring:' || lead_s || ':'
                  END || extract(epoch FROM expires_at)::text AS occurrence
    FROM due WHERE expires_at <= now() OR lead_s IS NOT NULL
), occurrences AS (  -- those not announced yet, so announced ones never fill the batch
    SELECT * FROM named WHERE NOT EXISTS (
        SELECT 1 FROM webhook_marks m WHERE m.key_id = named.id
                                        AND m.occurrence = named.occurrence)
    ORDER BY expires_at LIMIT $4
), marked AS (
    INSERT INTO webhook_marks (key_id, occurrence)
    SELECT id, occurrence FROM occurrences ON CONFLICT DO NOTHING
    RETURNING key_id, occurrence
)
SELECT o.*, now() AS at FROM occurrences o
JOIN marked m ON m.key_id = o.id AND m.occurrence = o.occurrence ORDER BY o.expires_at"""
STILL_DUE = "SELECT true FROM keys WHERE id = $1 AND status <> 'revoked' AND expires_at = $2"
# A change moved a key's expiry into the past: marked as a scan would mark it.
EXPIRED_NOW = """WITH key AS (
    SELECT id, org_id, owner_id, name, prefix, expires_at, NULL::bigint AS lead_s,
        'expired:' || extract(epoch FROM expires_at)::text AS occurrence
    FROM keys k WHERE id = $1 AND expires_at <= now() AND status <> 'revoked'
      AND EXISTS (SELECT 1 FROM webhook_endpoints w  -- else a scan may announce it later
                  WHERE w.org_id = k.org_id AND w.enabled AND 'key.expired' = ANY(w.events))
), marked AS (
    INSERT INTO webhook_marks (key_id, occurrence) SELECT id, occurrence FROM key
    ON CONFLICT DO NOTHING RETURNING key_id
)
SELECT key.*, now() AS at FROM key JOIN marked ON marked.key_id = key.id"""
CLEAN = """DELETE FROM webhook_events WHERE id IN (
    SELECT e.id FROM webhook_events e
    WHERE e.created_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                      WHERE d.event_id = e.id AND d.state = 'pending')
    LIMIT 1000)"""
# Marks no longer needed: a quota period is at most 31 days; an expiry warning is at most
# 90 days ahead and an expiry is looked back on for EXPIRED_LOOKBACK_S. Lifetime marks stay.
FORGET = """DELETE FROM webhook_marks WHERE ctid IN (
    SELECT ctid FROM webhook_marks
    WHERE created_at < now() - interval '32 days'
      AND (occurrence LIKE 'quota:%' OR (occurrence LIKE 'expir%'
                                         AND created_at < now() - interval '98 days'))
    LIMIT 1000)"""


async def scan(conn: Connection) -> int | None:
    """One round; returns how many events it recorded, or None when another instance was
    scanning (and this one did nothing)."""
    defaults = list(events.DEFAULT_EXPIRING_BEFORE_S)
    async with conn.transaction():
        if not await conn.fetchval(LOCK):
            return None
        # None: no organisation wants expiry events (or none wants warnings ahead); keys
        # that have expired are still looked for.
        longest = await conn.fetchval(LONGEST_LEAD, defaults) or 0
        rows = await conn.fetch(DUE, defaults, EXPIRED_LOOKBACK_S, longest, BATCH)
        # In key order, as a usage flush takes the keys' queue locks: neither waits on the
        # other in a cycle. Under the lock, a key revoked or given another expiry since the
        # statement above is skipped, so no expiry event follows its key.revoked, or its
        # key.expired from a PATCH.
        for row in sorted(rows, key=lambda r: str(r["id"])):
            await conn.execute(events.QUEUE_LOCK, row["id"])
            if await conn.fetchval(STILL_DUE, row["id"], row["expires_at"]):
                await events.record(conn, *_event(row), at=row["at"])
    return len(rows)


async def expired_by_change(conn: Connection, key_id: str) -> None:
    """A change, in this transaction, set the expiry of a key that had not expired to a time
    already past: ``key.expired`` now, not at the next scan (which looks back only
    EXPIRED_LOOKBACK_S), and once."""
    row = await conn.fetchrow(EXPIRED_NOW, key_id)
    if row is not None:
        await events.record(conn, *_event(row), at=row["at"])


async def clean(conn: Connection, settings: WebhookSettings) -> None:
    """Drops what retention no longer keeps, a batch at a time, each in its own statement."""
    await conn.execute(CLEAN, settings.retention_s)
    await conn.execute(FORGET)


def _event(row: asyncpg.Record) -> tuple[str, str, dict[str, object], dict[str, object]]:
    expires_at: datetime = row["expires_at"]
    data: dict[str, object] = {"expires_at": expires_at.isoformat()}
    if row["lead_s"] is None:
        type_ = events.KEY_EXPIRED
    else:
        type_ = events.KEY_EXPIRING
        data["expires_in_s"] = max(0, int((expires_at - row["at"]).total_seconds()))
        data["warning_lead_s"] = row["lead_s"]
    return type_, row["org_id"], events.key_view(row), data


async def run(pool: asyncpg.Pool, settings: WebhookSettings, stop: asyncio.Event) -> None:
    """A round every ``scan_interval_s``, the first one interval after start (instances
    already running have been scanning meanwhile)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.scan_interval_s)
        if stop.is_set():
            return
        try:
            async with pool.acquire() as conn:
                while await scan(conn) == BATCH and not stop.is_set():
                    pass  # a backlog: keep going
                await clean(conn, settings)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncpg.InternalClientError) as exc:
            log.warning("webhook expiry scan failed: %s", type(exc).__name__)
