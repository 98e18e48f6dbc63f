"""Organisations."""

from __future__ import annotations

from typing import Any, Literal

import asyncpg

from gateway import keyformat, rollups
from gateway.database import Connection, Queryable

ORG_COLUMNS = ("id, name, provider_id, key_prefix, key_defaults, rate_limits, metadata, "
               "notifications, created_at, updated_at")

# Columns a PATCH may change; anything else never reaches SQL.
UPDATABLE = ("name", "provider_id", "key_prefix", "key_defaults", "rate_limits", "metadata",
             "notifications")


async def insert(conn: Connection, values: dict[str, Any]) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""INSERT INTO orgs (id, name, provider_id, key_prefix, key_defaults, rate_limits,
            metadata, notifications)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {ORG_COLUMNS}""",
        values["id"], values["name"], values["provider_id"], values["key_prefix"],
        values["key_defaults"], values.get("rate_limits", []), values["metadata"],
        values.get("notifications", {}),
    )
    assert row is not None  # INSERT … RETURNING always yields the row
    return row


async def get(conn: Queryable, org_id: str,
              lock: Literal["UPDATE", "NO KEY UPDATE", "KEY SHARE"] | None = None
              ) -> asyncpg.Record | None:
    """``lock`` (inside a transaction): UPDATE to change or delete the organisation, KEY SHARE
    to keep it from being deleted while a key is created in it, NO KEY UPDATE to count its
    webhook endpoints while adding one (keys can still be created meanwhile)."""
    if not keyformat.is_id("org", org_id):
        return None
    suffix = f" FOR {lock}" if lock else ""
    return await conn.fetchrow(f"SELECT {ORG_COLUMNS} FROM orgs WHERE id = $1{suffix}", org_id)


async def get_by_provider(conn: Queryable, provider_id: str) -> asyncpg.Record | None:
    # Every request with a provider header resolves it here.
    return await conn.fetchrow(f"SELECT {ORG_COLUMNS} FROM orgs WHERE provider_id = $1",
                               provider_id)


async def page(conn: Queryable, after: str | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {ORG_COLUMNS} FROM orgs WHERE $1::text IS NULL OR id > $1
        ORDER BY id LIMIT $2""", after, limit)


# Objects a PATCH changes field by field: what it leaves out is kept.
MERGED = frozenset({"notifications"})


async def update(conn: Connection, org_id: str,
                 changes: dict[str, Any]) -> asyncpg.Record | None:
    columns = [c for c in UPDATABLE if c in changes]
    sets = ", ".join(f"{c} = {c} || ${i}" if c in MERGED else f"{c} = ${i}"
                     for i, c in enumerate(columns, start=2))
    return await conn.fetchrow(
        f"UPDATE orgs SET {sets}, updated_at = now() WHERE id = $1 RETURNING {ORG_COLUMNS}",
        org_id, *(changes[c] for c in columns))


async def key_ids(conn: Connection, org_id: str) -> list[str]:
    return [r["id"] for r in await conn.fetch("SELECT id FROM keys WHERE org_id = $1 "
                                              "ORDER BY serial", org_id)]


async def delete(conn: Connection, org_id: str) -> None:
    await conn.execute("DELETE FROM orgs WHERE id = $1", org_id)
    for statement in rollups.FORGET_ORG:  # its request history goes with it
        await conn.execute(statement, org_id)


async def owner_limits(conn: Queryable, org_id: str, owner_id: str) -> list[Any] | None:
    value: list[Any] | None = await conn.fetchval(
        "SELECT rate_limits FROM owner_limits WHERE org_id = $1 AND owner_id = $2",
        org_id, owner_id)
    return value


async def set_owner_limits(conn: Connection, org_id: str, owner_id: str,
                           rate_limits: list[Any]) -> None:
    await conn.execute(
        """INSERT INTO owner_limits (org_id, owner_id, rate_limits) VALUES ($1, $2, $3)
        ON CONFLICT (org_id, owner_id)
        DO UPDATE SET rate_limits = EXCLUDED.rate_limits, updated_at = now()""",
        org_id, owner_id, rate_limits)


async def delete_owner_limits(conn: Connection, org_id: str, owner_id: str) -> bool:
    return await conn.fetchval(
        "DELETE FROM owner_limits WHERE org_id = $1 AND owner_id = $2 RETURNING true",
        org_id, owner_id) is not None
