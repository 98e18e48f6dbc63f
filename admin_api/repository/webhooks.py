"""Webhook endpoints and their deliveries (the sender's side is admin_api.webhooks)."""

from __future__ import annotations

from typing import Any, Literal

import asyncpg

from gateway import keyformat
from gateway.database import Connection, Queryable

ENDPOINT_COLUMNS = ("id, org_id, url, events, description, enabled, disabled_reason, "
                    "failing_since, previous_expires_at AS previous_secret_expires_at, "
                    "created_at, updated_at")
# Columns a PATCH may change; anything else never reaches SQL.
UPDATABLE = ("url", "events", "description", "enabled")


async def insert(conn: Connection, values: dict[str, Any], secret: bytes, sealed: bool
                 ) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""INSERT INTO webhook_endpoints (id, org_id, url, events, description, enabled,
            secret, secret_sealed)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {ENDPOINT_COLUMNS}""",
        values["id"], values["org_id"], values["url"], values["events"],
        values["description"], values["enabled"], secret, sealed)
    assert row is not None  # INSERT … RETURNING always yields the row
    return row


async def count(conn: Queryable, org_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM webhook_endpoints WHERE org_id = $1",
                                   org_id))


async def get(conn: Queryable, org_id: str, endpoint_id: str,
              lock: Literal["UPDATE", "NO KEY UPDATE"] | None = None) -> asyncpg.Record | None:
    """``lock``: UPDATE to delete it, NO KEY UPDATE to change it (events being queued for
    it meanwhile, which take KEY SHARE, need not wait)."""
    if not keyformat.is_id("whk", endpoint_id):
        return None
    return await conn.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND org_id = $2"
        + (f" FOR {lock}" if lock else ""), endpoint_id, org_id)


async def page(conn: Queryable, org_id: str, after: str | None, limit: int
               ) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
        WHERE org_id = $1 AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3""",
        org_id, after, limit)


async def update(conn: Connection, endpoint_id: str, changes: dict[str, Any]
                 ) -> asyncpg.Record:
    columns = [c for c in UPDATABLE if c in changes]
    sets = "".join(f"{c} = ${i}, " for i, c in enumerate(columns, start=2))
    if changes.get("enabled") is True:  # enabled again: its failures are forgiven
        sets += "disabled_reason = NULL, failing_since = NULL, "
    elif changes.get("enabled") is False:
        sets += "disabled_reason = 'disabled by request', "
    row = await conn.fetchrow(
        f"""UPDATE webhook_endpoints SET {sets}updated_at = now() WHERE id = $1
        RETURNING {ENDPOINT_COLUMNS}""", endpoint_id, *(changes[c] for c in columns))
    assert row is not None  # the caller holds the row lock
    return row


async def roll_secret(conn: Connection, endpoint_id: str, secret: bytes, sealed: bool,
                      grace_s: int) -> asyncpg.Record:
    """The new secret signs from now on; the current one beside it for ``grace_s``."""
    row = await conn.fetchrow(
        f"""UPDATE webhook_endpoints SET
            previous_secret = CASE WHEN $4 > 0 THEN secret END,
            previous_sealed = CASE WHEN $4 > 0 THEN secret_sealed END,
            previous_expires_at = CASE WHEN $4 > 0
                THEN now() + make_interval(secs => $4) END,
            secret = $2, secret_sealed = $3, updated_at = now()
        WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}""", endpoint_id, secret, sealed, grace_s)
    assert row is not None  # the caller holds the row lock
    return row


async def delete(conn: Connection, endpoint_id: str) -> None:
    await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)


DELIVERY_COLUMNS = """d.id, d.seq, d.event_id, e.type AS event_type, e.key_id, d.state,
    d.attempts, CASE WHEN d.state = 'pending' AND d.next_attempt_at <> 'infinity'
                THEN d.next_attempt_at END AS next_attempt_at,
    d.created_at, d.finished_at,
    COALESCE((SELECT jsonb_agg(jsonb_build_object(
        'n', a.n, 'at', a.at, 'status_code', a.status_code, 'error', a.error,
        'latency_ms', a.latency_ms) ORDER BY a.n)
     FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]'::jsonb) AS attempt_log"""


async def deliveries(conn: Queryable, endpoint_id: str, state: str | None,
                     before: int | None, limit: int) -> list[asyncpg.Record]:
    """Newest first; ``before`` is the keyset cursor (a delivery's ``seq``)."""
    return await conn.fetch(
        f"""SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
        JOIN webhook_events e ON e.id = d.event_id
        WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.state = $2)
          AND ($3::bigint IS NULL OR d.seq < $3)
        ORDER BY d.seq DESC LIMIT $4""", endpoint_id, state, before, limit)


async def delivery(conn: Queryable, endpoint_id: str, delivery_id: str
                   ) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
        JOIN webhook_events e ON e.id = d.event_id
        WHERE d.endpoint_id = $1 AND d.id = $2""", endpoint_id, delivery_id)
