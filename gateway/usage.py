"""Usage written behind to PostgreSQL: each process adds up what its requests spent and
flushes it in one batch per interval (and on shutdown) — lifetime count, last use and daily
counts, the threshold webhook events the batch causes (``gateway.thresholds``), and what
every request came to, per minute and hour (``gateway.rollups``).
PostgreSQL stays the source of truth; a process that dies loses at most what it had not
flushed yet: its last ``flush_interval_s`` of traffic, and what the flush under way (a batch
taken when the flush began) had not committed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime

import asyncpg

from gateway import rollups, thresholds
from gateway.database import Connection
from gateway.keyrecord import KeyRecord
from gateway.metrics import FLUSH_LAG

log = logging.getLogger(__name__)

# GREATEST: a refund's negative delta can meet a count an operator has just lowered.
ADD_USAGE = """UPDATE keys SET usage_count = GREATEST(usage_count + $2, 0),
    last_used_at = CASE WHEN $3::timestamptz IS NULL THEN last_used_at
                        ELSE GREATEST(COALESCE(last_used_at, $3), $3) END,
    first_used_at = COALESCE(first_used_at, $3)
WHERE id = $1"""
ADD_DAILY = """INSERT INTO key_usage_daily (key_id, day, count)
SELECT $1, $2, GREATEST($3, 0) WHERE EXISTS (SELECT 1 FROM keys WHERE id = $1)
ON CONFLICT (key_id, day)
DO UPDATE SET count = GREATEST(key_usage_daily.count + $3, 0)"""


@dataclass
class _Batch:
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_used: dict[str, datetime] = field(default_factory=dict)
    daily: dict[str, dict[date, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    history: rollups.History = field(default_factory=rollups.History)

    def merge(self, other: _Batch) -> None:
        for key_id, n in other.totals.items():
            self.totals[key_id] += n
        for key_id, at in other.last_used.items():
            self.last_used[key_id] = max(at, self.last_used.get(key_id, at))
        for key_id, days in other.daily.items():
            for day, n in days.items():
                self.daily[key_id][day] += n
        self.history.merge(other.history, other_is_newer=True)


@dataclass
class UsageRecorder:
    open: _Batch = field(default_factory=_Batch)
    flushed_at: float = field(default_factory=time.monotonic)  # last time nothing was pending
    inflight: _Batch | None = None  # being written; still counted as pending until committed

    def record(self, key_id: str, cost: int, now: datetime) -> None:
        self.open.totals[key_id] += cost
        self.open.daily[key_id][now.date()] += cost
        self.open.last_used[key_id] = now

    def unrecord(self, key_id: str, cost: int, spent_at: datetime) -> None:
        """A refund, booked on the day the units were spent."""
        self.open.totals[key_id] -= cost
        self.open.daily[key_id][spent_at.date()] -= cost

    def outcome(self, key: KeyRecord, status: int, code: str) -> None:
        """What one request of ``key`` came to, for the charts (``gateway.rollups``)."""
        self.open.history.count(key, int(time.time()) // 60, status, code)

    def pending(self, key_id: str, since: date) -> tuple[int, int]:
        """Units not yet committed to PostgreSQL: lifetime, and since ``since``."""
        total = period = 0
        for batch in (self.open, self.inflight):
            if batch is None:
                continue
            total += batch.totals.get(key_id, 0)
            period += sum(n for day, n in batch.daily.get(key_id, {}).items() if day >= since)
        return total, period

    async def flush(self, pool: asyncpg.Pool) -> None:
        batch = self.open
        if not batch.totals and not batch.history.counts:
            self.flushed_at = time.monotonic()
            return
        self.open, self.inflight = _Batch(), batch
        try:
            async with pool.acquire() as conn, conn.transaction():
                # Sorted: two processes flushing the same keys lock them in the same order.
                await conn.executemany(ADD_USAGE, [
                    (key_id, batch.totals[key_id], batch.last_used.get(key_id))
                    for key_id in sorted(batch.totals)])
                await conn.executemany(ADD_DAILY, [
                    (key_id, day, n) for key_id in sorted(batch.daily)
                    for day, n in sorted(batch.daily[key_id].items()) if n])
                # Threshold webhooks, in the transaction that moved the counts.
                await thresholds.detect(conn, batch.totals, batch.daily)
                await self._add_history(conn, batch)
            self.flushed_at = time.monotonic()
        except BaseException as exc:
            # Not written (failure, or cancelled at shutdown): keep it for the next flush.
            batch.merge(self.open)
            self.open = batch
            if not isinstance(exc, Exception):
                raise
            log.warning("usage flush failed (%s); will retry", type(exc).__name__)
        finally:
            self.inflight = None

    async def _add_history(self, conn: Connection, batch: _Batch) -> None:
        """In a savepoint: the history failing to be written never holds the usage back; it
        is kept for the next flush instead."""
        if not batch.history.counts:
            return
        try:
            async with conn.transaction():
                await batch.history.add(conn)
        except asyncpg.PostgresError as exc:
            log.warning("request history not written (%s); will retry", type(exc).__name__)
            self.open.history.merge(batch.history, other_is_newer=False)
            batch.history = rollups.History()  # handed to the next batch

    async def run(self, pool: asyncpg.Pool, interval_s: float, stop: asyncio.Event) -> None:
        """Flushes every ``interval_s`` until ``stop`` is set, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # the interval passed: flush
                await asyncio.wait_for(stop.wait(), interval_s)
            await self.flush(pool)
            FLUSH_LAG.set(time.monotonic() - self.flushed_at)
