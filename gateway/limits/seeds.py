"""Lifetime and period usage from PostgreSQL, the source of truth, for counts Redis lost."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

import asyncpg

from gateway.keycache import POSTGRES_FAILURES
from gateway.keyrecord import KeyRecord
from gateway.limits import periods

# Lifetime and period usage of many keys at once: (key id, first day of its period) pairs.
SEEDS = """
SELECT s.id, k.usage_count,
       (SELECT COALESCE(sum(d.count), 0) FROM key_usage_daily d
        WHERE d.key_id = s.id AND d.day >= s.since) AS period_used
FROM unnest($1::text[], $2::date[]) AS s(id, since) JOIN keys k ON k.id = s.id"""

# Usage this process counted but has not written to PostgreSQL yet: (lifetime, period).
Pending = Callable[[str, date], tuple[int, int]]


def no_pending(key_id: str, since: date) -> tuple[int, int]:
    return 0, 0


class SeedUnavailable(Exception):
    """Counts Redis lost cannot be re-seeded: PostgreSQL does not answer."""


async def seeds_of(pool: asyncpg.Pool, records: list[KeyRecord], now: datetime,
                   pending: Pending) -> list[tuple[int, int]]:
    """Lifetime and period usage (one query for all) plus what this process has not flushed.
    Pending is read first: a flush landing in between is counted twice (stricter), never
    missed."""
    since = [periods.bounds(str(r.quota["period"]), now)[0].date() if r.quota
             else now.date() for r in records]
    unflushed = [pending(r.id, day) for r, day in zip(records, since, strict=True)]
    try:
        rows = await pool.fetch(SEEDS, [r.id for r in records], since)
    except POSTGRES_FAILURES as exc:
        raise SeedUnavailable(type(exc).__name__) from None
    stored = {row["id"]: (int(row["usage_count"]), int(row["period_used"])) for row in rows}
    return [(stored.get(r.id, (0, 0))[0] + extra[0], stored.get(r.id, (0, 0))[1] + extra[1])
            for r, extra in zip(records, unflushed, strict=True)]
