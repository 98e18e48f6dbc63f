"""Keys, their secrets, defaults and usage counters."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from gateway import keyformat
from gateway.database import Connection, Queryable
from gateway.keyrecord import KEY_COLUMNS, SELECT_BY_ID, KeyRecord

# Columns ``update`` may set; anything else never reaches SQL.
UPDATABLE = ("name", "owner_id", "scopes", "expires_at", "usage_limit", "quota", "rate_limits",
             "metadata", "is_default", "shadow_limits")


def _one(row: asyncpg.Record | None) -> KeyRecord:
    """The row of an UPDATE on a key the caller has locked; it cannot have vanished."""
    if row is None:
        raise LookupError("key disappeared inside its own transaction")
    return KeyRecord.from_row(row)


async def get(conn: Queryable, key_id: str, *, for_update: bool = False
              ) -> KeyRecord | None:
    if not keyformat.is_id("key", key_id):
        return None
    row = await conn.fetchrow(SELECT_BY_ID + (" FOR UPDATE OF k" if for_update else ""), key_id)
    return KeyRecord.from_row(row) if row else None


async def insert(conn: Connection, values: dict[str, Any], digest: bytes) -> KeyRecord:
    row = await conn.fetchrow(
        f"""INSERT INTO keys AS k (id, org_id, owner_id, name, environment, root, parent_id,
            scopes, expires_at, usage_limit, quota, rate_limits, metadata, prefix, key_prefix,
            recoverable, secret_ciphertext)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
        RETURNING {KEY_COLUMNS}""",
        values["id"], values["org_id"], values["owner_id"], values["name"],
        values["environment"], values["root"], values["parent_id"], values["scopes"],
        values["expires_at"], values["usage_limit"], values["quota"], values["rate_limits"],
        values["metadata"], values["prefix"], values["key_prefix"],
        values.get("secret_ciphertext") is not None, values.get("secret_ciphertext"))
    await conn.execute("INSERT INTO key_secrets (hash, key_id) VALUES ($1, $2)", digest,
                       values["id"])
    return _one(row)


async def page(conn: Queryable, *, org_id: str | None, owner_id: str | None,
               status: str | None, environment: str | None, root: bool | None,
               after: int | None, limit: int, search: str | None = None) -> list[KeyRecord]:
    """Keyset pagination in creation order (``serial``); ``status`` may be the derived
    ``expired``."""
    rows = await conn.fetch(
        f"""SELECT {KEY_COLUMNS} FROM keys k
        WHERE ($1::text IS NULL OR k.org_id = $1)
          AND ($2::text IS NULL OR k.owner_id = $2)
          AND ($3::text IS NULL OR k.environment = $3)
          AND ($4::boolean IS NULL OR k.root = $4)
          AND ($5::bigint IS NULL OR k.serial > $5)
          AND ($6::text IS NULL
               OR ($6 = 'expired' AND k.status <> 'revoked' AND k.expires_at <= now())
               OR ($6 = 'revoked' AND k.status = 'revoked')
               OR ($6 IN ('active', 'paused') AND k.status = $6
                   AND (k.expires_at IS NULL OR k.expires_at > now())))
          AND ($8::text IS NULL OR k.id = $8 OR starts_with(k.prefix, $8)
               OR strpos(lower(k.name), lower($8)) > 0
               OR strpos(lower(k.owner_id), lower($8)) > 0)
        ORDER BY k.serial LIMIT $7""",
        org_id, owner_id, environment, root, after, status, limit, search)
    return [KeyRecord.from_row(row) for row in rows]


async def update(conn: Connection, key_id: str, changes: dict[str, Any]) -> KeyRecord:
    columns = [c for c in UPDATABLE if c in changes]
    sets = "".join(f"{c} = ${i}, " for i, c in enumerate(columns, start=2))
    row = await conn.fetchrow(
        f"UPDATE keys AS k SET {sets}updated_at = now() WHERE id = $1 RETURNING {KEY_COLUMNS}",
        key_id, *(changes[c] for c in columns))
    return _one(row)


async def set_status(conn: Connection, key_id: str, status: str) -> KeyRecord:
    row = await conn.fetchrow(
        f"""UPDATE keys AS k SET status = $2, updated_at = now(),
            revoked_at = CASE WHEN $2 = 'revoked' THEN now() ELSE revoked_at END,
            is_default = CASE WHEN $2 = 'revoked' THEN false ELSE is_default END
        WHERE id = $1 RETURNING {KEY_COLUMNS}""", key_id, status)
    return _one(row)


async def delete(conn: Connection, key_id: str) -> None:
    await conn.execute("DELETE FROM keys WHERE id = $1", key_id)


async def rotate(conn: Connection, key_id: str, digest: bytes, display_prefix: str,
                 grace: timedelta) -> datetime | None:
    """Adds a new secret; the live old ones stop at now + grace (or at once, when grace is 0;
    an earlier, shorter grace is never extended). Returns when the last old secret stops
    working, or None when they stopped at once."""
    ends: datetime | None = None
    if grace:
        ends = await conn.fetchval(
            """WITH cut AS (
                UPDATE key_secrets SET expires_at = LEAST(COALESCE(expires_at, 'infinity'),
                                                          now() + $2)
                WHERE key_id = $1 AND (expires_at IS NULL OR expires_at > now())
                RETURNING expires_at)
            SELECT max(expires_at) FROM cut""", key_id, grace)
        # Already-expired secrets are of no use to anyone: drop them.
        await conn.execute("DELETE FROM key_secrets WHERE key_id = $1 AND expires_at <= now()",
                           key_id)
    else:
        await conn.execute("DELETE FROM key_secrets WHERE key_id = $1", key_id)
    await conn.execute("INSERT INTO key_secrets (hash, key_id) VALUES ($1, $2)", digest, key_id)
    await conn.execute("UPDATE keys SET prefix = $2, updated_at = now() WHERE id = $1", key_id,
                       display_prefix)
    return ends


async def lock_owner(conn: Connection, org_id: str, owner_id: str) -> None:
    """Serialises default switching per owner. Taken before any key row lock, in every path
    that moves a default, so two switches cannot deadlock."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))",
                       org_id, owner_id)


async def current_default(conn: Connection, org_id: str, owner_id: str) -> KeyRecord | None:
    row = await conn.fetchrow(
        f"""SELECT {KEY_COLUMNS} FROM keys k
        WHERE k.org_id = $1 AND k.owner_id = $2 AND k.is_default FOR UPDATE""",
        org_id, owner_id)
    return KeyRecord.from_row(row) if row else None


async def set_default(conn: Connection, key_id: str, on: bool) -> KeyRecord:
    row = await conn.fetchrow(
        f"""UPDATE keys AS k SET is_default = $2, updated_at = now() WHERE id = $1
        RETURNING {KEY_COLUMNS}""", key_id, on)
    return _one(row)


async def change_usage(conn: Connection, key_id: str, op: str, value: int) -> KeyRecord:
    """Set, increment or decrement the lifetime count; it never goes below zero."""
    expression = {"set": "$2", "increment": "usage_count + $2",
                  "decrement": "GREATEST(usage_count - $2, 0)"}[op]
    row = await conn.fetchrow(
        f"""UPDATE keys AS k SET usage_count = {expression}, updated_at = now()
        WHERE id = $1 RETURNING {KEY_COLUMNS}""", key_id, value)
    return _one(row)


async def daily(conn: Queryable, key_id: str, since: date) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT day, count FROM key_usage_daily WHERE key_id = $1 AND day >= $2 ORDER BY day",
        key_id, since)


async def used_since(conn: Queryable, key_id: str, since: date) -> int:
    return int(await conn.fetchval(
        "SELECT COALESCE(sum(count), 0) FROM key_usage_daily WHERE key_id = $1 AND day >= $2",
        key_id, since))


async def id_by_serial(conn: Queryable, org_id: str, serial: int) -> str | None:
    """Dialects whose documented ids are integers address keys by their serial."""
    key_id: str | None = await conn.fetchval(
        "SELECT id FROM keys WHERE org_id = $1 AND serial = $2", org_id, serial)
    return key_id


async def sealed_secret(conn: Queryable, key_id: str) -> bytes | None:
    """The encrypted secret of a recoverable key (never cached, never sent to Redis)."""
    value: bytes | None = await conn.fetchval(
        "SELECT secret_ciphertext FROM keys WHERE id = $1", key_id)
    return value


async def set_sealed_secret(conn: Connection, key_id: str, sealed: bytes) -> None:
    await conn.execute("UPDATE keys SET secret_ciphertext = $2 WHERE id = $1", key_id, sealed)


async def id_by_secret(conn: Queryable, org_id: str, digest: bytes) -> str | None:
    """The key of ``org_id`` whose live secret hashes to ``digest``."""
    key_id: str | None = await conn.fetchval(
        """SELECT k.id FROM key_secrets s JOIN keys k ON k.id = s.key_id
        WHERE s.hash = $1 AND k.org_id = $2""", digest, org_id)
    return key_id
