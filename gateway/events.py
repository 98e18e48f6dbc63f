"""Webhook events, written to the outbox in the transaction of the change that causes them.

An event is recorded only when an enabled endpoint of its organisation asked for its type,
and one delivery per such endpoint is queued with it; the admin API's senders take it from
there (``admin_api.webhooks``). Events name the key by id, owner, name and display prefix,
never by its secret."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg

from gateway import keyformat
from gateway.database import Connection
from gateway.keyrecord import KeyRecord

KEY_CREATED: Final = "key.created"
KEY_ROTATED: Final = "key.rotated"
KEY_REVOKED: Final = "key.revoked"
KEY_PAUSED: Final = "key.paused"
KEY_EXPIRING: Final = "key.expiring"
KEY_EXPIRED: Final = "key.expired"
QUOTA_THRESHOLD: Final = "quota.threshold"
USAGE_THRESHOLD: Final = "usage.threshold"
TYPES: Final = (KEY_CREATED, KEY_ROTATED, KEY_REVOKED, KEY_PAUSED, KEY_EXPIRING, KEY_EXPIRED,
                QUOTA_THRESHOLD, USAGE_THRESHOLD)

# Events about one key are queued one at a time (the sender takes the lock too, to let the
# next delivery go), so each endpoint's deliveries about a key stand in commit order.
QUEUE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('keystile webhooks ' || $1, 0))"
# The event and its deliveries in one statement; nothing when no endpoint wants the type.
# KEY SHARE: an endpoint removed meanwhile is skipped, not a foreign-key failure. A delivery
# with an earlier one of its endpoint and key still pending waits behind it ('infinity').
RECORD = """WITH endpoints AS (
    SELECT id FROM webhook_endpoints WHERE org_id = $2 AND enabled AND $4 = ANY(events)
    FOR KEY SHARE
), event AS (
    INSERT INTO webhook_events (id, org_id, key_id, type, payload, created_at)
    SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM endpoints)
    RETURNING id
)
INSERT INTO webhook_deliveries (id, event_id, endpoint_id, ordering, next_attempt_at)
SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), event.id, endpoints.id, $3,
    CASE WHEN EXISTS (SELECT 1 FROM webhook_deliveries q
                      WHERE q.endpoint_id = endpoints.id AND q.ordering = $3
                        AND q.state = 'pending') THEN 'infinity'::timestamptz
         ELSE now() END
FROM event CROSS JOIN endpoints"""

# Senders LISTEN here: a commit that queued deliveries wakes them at once (else they poll).
CHANNEL: Final = "keystile_webhooks"

KEY_FIELDS: Final = ("id", "owner_id", "name", "prefix")


def key_view(key: KeyRecord | Mapping[str, Any] | asyncpg.Record) -> dict[str, Any]:
    """What an event says about a key: a key record, or a row with ``KEY_FIELDS``."""
    if isinstance(key, KeyRecord):
        return {name: getattr(key, name) for name in KEY_FIELDS}
    return {name: key[name] for name in KEY_FIELDS}


async def record(conn: Connection, type_: str, org_id: str, key: dict[str, Any],
                 data: dict[str, Any], *, at: datetime | None = None) -> None:
    """Queues a ``type_`` event about ``key`` (``key_view``) for ``org_id``'s endpoints."""
    at = at or datetime.now(UTC)
    event_id = keyformat.new_id("evt")
    payload = {"id": event_id, "type": type_, "created_at": at.isoformat(),
               "org_id": org_id, "key": key, "data": data}
    await conn.execute(QUEUE_LOCK, key["id"])
    status = await conn.execute(RECORD, event_id, org_id, key["id"], type_, payload, at)
    if not status.endswith(" 0"):  # "INSERT 0 <deliveries>"
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)


# An organisation's ``notifications`` as stored (jsonb; a missing field takes its default).
DEFAULT_EXPIRING_BEFORE_S: Final = (7 * 86400, 86400)
DEFAULT_PERCENT: Final = (80, 100)


def percents(notifications: Mapping[str, Any], field: str) -> list[int]:
    """``quota_percent`` or ``usage_percent``."""
    return list(notifications.get(field, DEFAULT_PERCENT))
