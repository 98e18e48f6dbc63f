"""``quota.threshold`` and ``usage.threshold``: found where usage is spent, as it is written.

Each process writes its usage behind in batches (``gateway.usage``); the flush that moves a
key's count across a threshold records the event in its own transaction. Flushes of one key
are serialised by the key's row lock, so before and after are exact however many workers,
hosts and admin instances spend it, and the crossing is seen by exactly one flush. An
occurrence — this threshold of this limit, in this quota period — is also marked in
``webhook_marks``, so a refund that dips back under a threshold does not announce it twice.
Lowering the lifetime count (an administrator's reset) clears its marks: crossing again is a
new occurrence."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from gateway import events
from gateway.database import Connection
from gateway.limits.periods import bounds

# Keys of the batch with a limit whose organisation has an endpoint for threshold events,
# with their counts as this transaction left them.
CANDIDATES = """SELECT k.id, k.org_id, k.owner_id, k.name, k.prefix, k.usage_count,
    k.usage_limit, k.quota, o.notifications,
    CASE WHEN k.quota IS NOT NULL THEN (
        SELECT COALESCE(sum(d.count), 0) FROM key_usage_daily d
        WHERE d.key_id = k.id AND d.day >= CASE k.quota ->> 'period'
            WHEN 'day' THEN $2::date WHEN 'week' THEN $3::date ELSE $4::date END) END
        AS period_used
FROM keys k JOIN orgs o ON o.id = k.org_id
WHERE k.id = ANY($1) AND (k.usage_limit IS NOT NULL OR k.quota IS NOT NULL)
  AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.org_id = k.org_id AND w.enabled
              AND w.events && ARRAY['quota.threshold', 'usage.threshold'])"""
MARK = """INSERT INTO webhook_marks (key_id, occurrence) VALUES ($1, $2)
ON CONFLICT DO NOTHING RETURNING true"""
FORGET_USAGE = "DELETE FROM webhook_marks WHERE key_id = $1 AND occurrence LIKE 'usage:%'"


def crossed(before: int, after: int, limit: int, percents: list[int]) -> list[int]:
    """The percentages of ``limit`` that going from ``before`` to ``after`` reached."""
    if limit <= 0:
        return []
    return [p for p in sorted(set(percents))
            if before < math.ceil(limit * p / 100) <= after]


async def detect(conn: Connection, totals: Mapping[str, int],
                 daily: Mapping[str, Mapping[date, int]], now: datetime) -> None:
    """After ``totals`` (lifetime) and ``daily`` were added, inside the same transaction."""
    if not totals:
        return
    starts = {period: bounds(period, now) for period in ("day", "week", "month")}
    rows = await conn.fetch(CANDIDATES, list(totals), *(starts[p][0].date()
                                                        for p in ("day", "week", "month")))
    for row in rows:
        key_id, notes = row["id"], row["notifications"]
        if row["usage_limit"] is not None:
            after = row["usage_count"]
            for p in crossed(after - totals[key_id], after, row["usage_limit"],
                             events.percents(notes, "usage_percent")):
                await _announce(conn, row, events.USAGE_THRESHOLD,
                                f"usage:{p}:{row['usage_limit']}",
                                {"percent": p, "limit": row["usage_limit"], "used": after})
        quota: dict[str, Any] | None = row["quota"]
        if quota is not None and row["period_used"] is not None:
            start, end = starts[quota["period"]]
            spent = sum(n for day, n in daily.get(key_id, {}).items() if day >= start.date())
            after = int(row["period_used"])
            for p in crossed(after - spent, after, quota["limit"],
                             events.percents(notes, "quota_percent")):
                await _announce(conn, row, events.QUOTA_THRESHOLD,
                                f"quota:{p}:{quota['limit']}:{start.date().isoformat()}",
                                {"percent": p, "limit": quota["limit"], "used": after,
                                 "period": quota["period"], "period_start": start.isoformat(),
                                 "resets_at": end.isoformat()})


async def _announce(conn: Connection, row: Any, type_: str, occurrence: str,
                    data: dict[str, Any]) -> None:
    if await conn.fetchval(MARK, row["id"], occurrence):
        await events.record(conn, type_, row["org_id"], events.key_view(row), data)


async def forget_usage(conn: Connection, key_id: str) -> None:
    """The lifetime count went down: its thresholds may be crossed again."""
    await conn.execute(FORGET_USAGE, key_id)
