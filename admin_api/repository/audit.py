"""The audit trail: one row per mutation, written in the mutation's own transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.database import Connection, Queryable

AUDIT_COLUMNS = ("id, at, actor_type, actor_id, org_id, action, target_type, target_id, "
                 "changes, request_id")


@dataclass(frozen=True, slots=True)
class Actor:
    type: str  # operator | key | system
    id: str | None


async def record(conn: Connection, actor: Actor, action: str, *, target_type: str,
                 target_id: str, org_id: str | None, changes: dict[str, Any],
                 request_id: str | None) -> None:
    await conn.execute(
        """INSERT INTO audit_log (actor_type, actor_id, org_id, action, target_type, target_id,
        changes, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        actor.type, actor.id, org_id, action, target_type, target_id, changes, request_id)


async def page(conn: Queryable, *, org_id: str | None, target_id: str | None,
               action: str | None, before: int | None, limit: int) -> list[asyncpg.Record]:
    """Newest first; ``before`` is the keyset cursor (an audit id)."""
    return await conn.fetch(
        f"""SELECT {AUDIT_COLUMNS} FROM audit_log
        WHERE ($1::text IS NULL OR org_id = $1)
          AND ($2::text IS NULL OR target_id = $2)
          AND ($3::text IS NULL OR action = $3)
          AND ($4::bigint IS NULL OR id < $4)
        ORDER BY id DESC LIMIT $5""",
        org_id, target_id, action, before, limit)
