"""Requests over time, written behind: what each key's requests came to (the status the
client got, and the gateway's refusal code) per minute and per hour, for the console's
charts and its "limited now" view. A process counts in memory (a dict increment per
request) and adds its counts to PostgreSQL in the usage flush; rows older than the
retention are dropped by the admin API's housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

import asyncpg

from gateway.database import Queryable

log = logging.getLogger(__name__)

MINUTE_S, HOUR_S = 60, 3600
MINUTES_KEPT_S = 2 * 86400  # the day view reads minutes
HOURS_KEPT_S = 40 * 86400  # the 30-day view reads hours
TABLES = {MINUTE_S: "usage_minutes", HOUR_S: "usage_hours"}

# (key id, organisation, owner, minute since the epoch, status, refusal code or '')
Outcome = tuple[str, str, str | None, int, int, str]

_ADD = """INSERT INTO {table} AS u (bucket, key_id, org_id, owner_id, status, code, count)
SELECT to_timestamp(b * {width}), k, o, w, s, c, n
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[],
            $7::bigint[]) AS t(b, k, o, w, s, c, n)
ON CONFLICT (key_id, bucket, status, code) DO UPDATE SET count = u.count + excluded.count"""
_CLEAN = "DELETE FROM {table} WHERE bucket < now() - make_interval(secs => $1)"


def merge(into: dict[Outcome, int], other: dict[Outcome, int]) -> None:
    for outcome, n in other.items():
        into[outcome] += n


def _by_width(counts: dict[Outcome, int], width: int) -> dict[Outcome, int]:
    if width == MINUTE_S:
        return counts
    wider: dict[Outcome, int] = defaultdict(int)
    for (key_id, org_id, owner_id, minute, status, code), n in counts.items():
        wider[key_id, org_id, owner_id, minute * MINUTE_S // width, status, code] += n
    return wider


def _columns(counts: dict[Outcome, int]) -> list[list[Any]]:
    """The rows as one array per column (bucket first), sorted by the primary key: two
    processes adding to the same rows lock them in one order."""
    rows = sorted(counts.items(), key=lambda item: (item[0][0], item[0][3], item[0][4],
                                                     item[0][5]))
    columns: list[list[Any]] = [[] for _ in range(7)]
    for (key_id, org_id, owner_id, bucket, status, code), n in rows:
        for column, value in zip(columns, (bucket, key_id, org_id, owner_id, status, code, n),
                                 strict=True):
            column.append(value)
    return columns


async def add(conn: Queryable, counts: dict[Outcome, int]) -> None:
    """Adds one process's counts (keyed by minute) to both tables."""
    if not counts:
        return
    for width, table in TABLES.items():
        await conn.execute(_ADD.format(table=table, width=width),
                           *_columns(_by_width(counts, width)))


async def clean(conn: Queryable) -> None:
    for table, kept_s in (("usage_minutes", MINUTES_KEPT_S), ("usage_hours", HOURS_KEPT_S)):
        await conn.execute(_CLEAN.format(table=table), float(kept_s))


async def keep_clean(pool: asyncpg.Pool, stop: asyncio.Event, interval_s: float = 600) -> None:
    """Drops rows past their retention every ``interval_s`` until ``stop`` is set (the admin
    API runs it; every instance may, the deletes do not conflict)."""
    while not stop.is_set():
        try:
            await clean(pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("dropping old request history failed: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


# Drops an organisation's rows ($1: its id), when the organisation is deleted.
FORGET_ORG = [f"DELETE FROM {table} WHERE org_id = $1" for table in TABLES.values()]
