"""Usage written behind to PostgreSQL: each process adds up what its requests spent and
flushes it in one batch per interval (and on shutdown) — lifetime count, last use and daily
counts. PostgreSQL stays the source of truth; a process that dies loses at most what it had
not flushed yet, i.e. at most ``flush_interval_s`` of its traffic."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime

import asyncpg

log = logging.getLogger(__name__)

ADD_USAGE = """UPDATE keys SET usage_count = usage_count + $2,
    last_used_at = GREATEST(COALESCE(last_used_at, $3), $3)
WHERE id = $1"""
ADD_DAILY = """INSERT INTO key_usage_daily (key_id, day, count)
SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM keys WHERE id = $1)
ON CONFLICT (key_id, day) DO UPDATE SET count = key_usage_daily.count + EXCLUDED.count"""


@dataclass
class UsageRecorder:
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_used: dict[str, datetime] = field(default_factory=dict)
    daily: dict[tuple[str, date], int] = field(default_factory=lambda: defaultdict(int))

    def record(self, key_id: str, cost: int, now: datetime) -> None:
        self.totals[key_id] += cost
        self.daily[(key_id, now.date())] += cost
        self.last_used[key_id] = now

    def unrecord(self, key_id: str, cost: int, now: datetime) -> None:
        """A refund: the units go back before they are flushed (or as a negative delta)."""
        self.totals[key_id] -= cost
        self.daily[(key_id, now.date())] -= cost

    def pending(self, key_id: str, since: date) -> tuple[int, int]:
        """Units not yet in PostgreSQL: lifetime, and since ``since`` (for quota seeds)."""
        period = sum(n for (k, day), n in self.daily.items() if k == key_id and day >= since)
        return self.totals.get(key_id, 0), period

    async def flush(self, pool: asyncpg.Pool) -> None:
        if not self.totals and not self.daily:
            return
        totals, last_used, daily = self.totals, self.last_used, self.daily
        self.totals, self.last_used, self.daily = defaultdict(int), {}, defaultdict(int)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.executemany(ADD_USAGE, [
                    (key_id, n, last_used.get(key_id) or datetime.now().astimezone())
                    for key_id, n in totals.items() if n or key_id in last_used])
                await conn.executemany(ADD_DAILY, [(k, d, n) for (k, d), n in daily.items()
                                                   if n])
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Keep the units for the next flush rather than losing them.
            log.warning("usage flush failed; will retry", extra={"error": type(exc).__name__})
            for key_id, n in totals.items():
                self.totals[key_id] += n
            for day_key, n in daily.items():
                self.daily[day_key] += n
            for key_id, at in last_used.items():
                self.last_used.setdefault(key_id, at)

    async def run(self, pool: asyncpg.Pool, interval_s: float) -> None:
        """Flushes every ``interval_s`` until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush(pool)
        finally:
            await self.flush(pool)
