"""``quota.threshold`` and ``usage.threshold``: found where usage is spent, as it is written.

Each process writes its usage behind in batches (``gateway.usage``); the flush that moves a
key's count across a threshold records the event in its own transaction. Flushes of one key
are serialised by the key's row lock, so before and after are exact however many workers,
hosts and admin instances spend it, and the crossing is seen by exactly one flush. An
occurrence — this threshold of this limit, in this quota period — is also marked in
``webhook_marks``, so a refund that dips back under a threshold does not announce it twice.
Lowering the lifetime count (an administrator's reset) clears its marks: crossing again is a
new occurrence. A key's limits changed to ones its usage is already at or over
(``limits_changed``) announce those thresholds at once: a limit is part of the occurrence."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from gateway import events
from gateway.database import Connection
from gateway.limits.periods import period_end, period_start

# Keys of the batch with a limit whose organisation has an endpoint for threshold events,
# with their counts as this transaction left them (in id order: the queue locks are taken
# in that order).
CANDIDATES = """SELECT k.id, k.org_id, k.owner_id, k.name, k.prefix, k.usage_count,
    k.usage_limit, k.quota, o.notifications
FROM keys k JOIN orgs o ON o.id = k.org_id
WHERE k.id = ANY($1) AND (k.usage_limit IS NOT NULL OR k.quota IS NOT NULL)
  AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.org_id = k.org_id AND w.enabled
              AND w.events && ARRAY['quota.threshold', 'usage.threshold'])
ORDER BY k.id COLLATE "C"
"""
DAILY = """SELECT key_id, day, count FROM key_usage_daily
WHERE key_id = ANY($1) AND day >= $2"""
MARK = """INSERT INTO webhook_marks (key_id, occurrence) VALUES ($1, $2)
ON CONFLICT DO NOTHING RETURNING true"""
FORGET_USAGE = "DELETE FROM webhook_marks WHERE key_id = $1 AND occurrence LIKE 'usage:%'"


def crossed(before: int, after: int, limit: int, percents: list[int]) -> list[int]:
    """The percentages of ``limit`` that going from ``before`` to ``after`` reached (p% of
    it is reached at the smallest whole count at or above it; ``before`` -1 asks which are
    reached at ``after`` at all, those of a limit of 0 included)."""
    return [p for p in sorted(set(percents)) if before < -(-limit * p // 100) <= after]


@dataclass(frozen=True, slots=True)
class Crossing:
    percent: int
    used: int
    start: datetime
    end: datetime


def _start_of(period: str, day: date) -> datetime:
    return period_start(period, datetime.combine(day, time(), UTC))


def quota_crossings(limit: int, period: str, percents: list[int],
                    spent: Mapping[date, int], daily: Mapping[date, int]) -> list[Crossing]:
    """The thresholds a batch (``spent`` per day) moved a quota across, period by period —
    a batch written just after midnight may hold the end of the previous period — given
    the daily counts as the batch left them."""
    found = []
    periods: dict[datetime, int] = defaultdict(int)
    for day, n in spent.items():
        periods[_start_of(period, day)] += n
    for start, n in sorted(periods.items()):
        end = period_end(period, start)
        used = sum(c for day, c in daily.items() if start.date() <= day < end.date())
        found += [Crossing(p, used, start, end)
                  for p in crossed(used - n, used, limit, percents)]
    return found


async def detect(conn: Connection, totals: Mapping[str, int],
                 daily: Mapping[str, Mapping[date, int]]) -> None:
    """After ``totals`` (lifetime) and ``daily`` were added, inside the same transaction."""
    if not totals:
        return
    rows = await conn.fetch(CANDIDATES, list(totals))
    quota_keys = [r for r in rows if r["quota"] is not None and daily.get(r["id"])]
    counts: dict[str, dict[date, int]] = defaultdict(dict)
    if quota_keys:
        since = min(_start_of(r["quota"]["period"], min(daily[r["id"]])) for r in quota_keys)
        for d in await conn.fetch(DAILY, [r["id"] for r in quota_keys], since.date()):
            counts[d["key_id"]][d["day"]] = d["count"]
    for row in rows:
        key_id, notes = row["id"], row["notifications"]
        if row["usage_limit"] is not None:
            after = row["usage_count"]
            for p in crossed(after - totals[key_id], after, row["usage_limit"],
                             events.percents(notes, "usage_percent")):
                await _usage(conn, row, p)
        quota: dict[str, Any] | None = row["quota"]
        if quota is None or key_id not in counts:
            continue
        for c in quota_crossings(quota["limit"], quota["period"],
                                 events.percents(notes, "quota_percent"),
                                 daily[key_id], counts[key_id]):
            await _quota(conn, row, c)


async def limits_changed(conn: Connection, key_id: str, *, usage: bool, quota: bool) -> None:
    """A key's ``usage_limit`` (``usage``) or ``quota`` was changed, in this transaction: the
    thresholds of the new limit its usage already reached are announced now (a key lowered
    below its usage is refused from now on, and nothing would cross a threshold to say so).
    A limit of 0 is reached at once: every threshold of it."""
    if not (usage or quota):
        return
    row = await conn.fetchrow(CANDIDATES, [key_id])
    if row is None:
        return
    notes = row["notifications"]
    if usage and row["usage_limit"] is not None:
        for p in crossed(-1, row["usage_count"], row["usage_limit"],
                         events.percents(notes, "usage_percent")):
            await _usage(conn, row, p)
    spec: dict[str, Any] | None = row["quota"]
    if quota and spec is not None:
        start = period_start(spec["period"], datetime.now(UTC))
        used = sum(d["count"] for d in await conn.fetch(DAILY, [key_id], start.date()))
        for p in crossed(-1, used, spec["limit"], events.percents(notes, "quota_percent")):
            await _quota(conn, row, Crossing(p, used, start,
                                             period_end(spec["period"], start)))


async def _usage(conn: Connection, row: Any, percent: int) -> None:
    await _announce(conn, row, events.USAGE_THRESHOLD, f"usage:{percent}:{row['usage_limit']}",
                    {"percent": percent, "limit": row["usage_limit"],
                     "used": row["usage_count"]})


async def _quota(conn: Connection, row: Any, c: Crossing) -> None:
    quota = row["quota"]
    await _announce(
        conn, row, events.QUOTA_THRESHOLD,
        f"quota:{quota['period']}:{c.start.date().isoformat()}:{quota['limit']}:{c.percent}",
        {"percent": c.percent, "limit": quota["limit"], "used": c.used,
         "period": quota["period"], "period_start": c.start.isoformat(),
         "resets_at": c.end.isoformat()})


async def _announce(conn: Connection, row: Any, type_: str, occurrence: str,
                    data: dict[str, Any]) -> None:
    if await conn.fetchval(MARK, row["id"], occurrence):
        await events.record(conn, type_, row["org_id"], events.key_view(row), data)


async def forget_usage(conn: Connection, key_id: str) -> None:
    """The lifetime count went down: its thresholds may be crossed again."""
    await conn.execute(FORGET_USAGE, key_id)
