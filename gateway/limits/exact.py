"""``limits_mode = "exact"``: every request's rate limits, quota and lifetime usage checked
and spent in ONE atomic script run (``gateway/limits/script.py``), in one round trip.

A request refused by one limit spends no other. Counts Redis has lost (restart, eviction,
FLUSHALL, a new quota period) are re-seeded from PostgreSQL: the script says so and the
caller runs it again with seeds. What can be lost is usage not yet flushed to PostgreSQL (see
``gateway/usage.py``). A spend carries its request's deadline (in Redis's clock): a script
that runs after it — Redis stalled, the request was answered 503 — spends nothing
(``TooLate``). Syncs of requests already admitted and served (fast mode) carry none."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from gateway.keyrecord import KeyRecord
from gateway.limits import periods
from gateway.limits.decision import ALLOWED, Decision, Window
from gateway.limits.plan import (
    Plan,
    Shape,
    deadline_ms,
    decide,
    key_state,
    leading_numbers,
    packed,
    plan,
    state_key,
    subject_numbers,
)
from gateway.limits.plan import window_states as states_of
from gateway.limits.runner import ScriptRunner
from gateway.limits.script import LATE, NEED_SEED
from gateway.limits.seeds import Pending, SeedUnavailable, no_pending, seeds_of
from gateway.redisclient import Store
from gateway.redisclock import RedisClock

log = logging.getLogger(__name__)

# The script must have run this long before the request's deadline: its answer has to travel
# back. At most a tenth of what is left, so a short store deadline still leaves room.
REPLY_MARGIN_S = 0.05
SHAPES_REMEMBERED = 100_000


class TooLate(Exception):
    """Redis ran the spend after the request's deadline (it was stalled): nothing was spent,
    and the request is answered 503 (it may have been already)."""


class Limiter:
    def __init__(self, redis: Store, pool: asyncpg.Pool) -> None:
        self.redis = redis
        self.pool = pool
        self.runner = ScriptRunner(redis, self._refund_late)
        self._shapes: dict[str, Shape] = {}

    @property
    def clock(self) -> RedisClock:
        return self.runner.clock

    def shape(self, record: KeyRecord) -> Shape:
        """The record's shape, remembered while the (cached) record object is the same."""
        known = self._shapes.get(record.id)
        if known is None or known.record is not record:
            if len(self._shapes) >= SHAPES_REMEMBERED:
                self._shapes.clear()
            known = self._shapes[record.id] = Shape.of(record)
        return known

    async def spend(self, record: KeyRecord, cost: int, enforce: bool, now: datetime,
                    pending: Pending = no_pending, deadline: float | None = None
                    ) -> Decision:
        """Checks and spends atomically. ``deadline`` (``time.time()`` terms): when the
        request stops waiting; a script that runs later spends nothing (``TooLate``)."""
        when = deadline_ms(self.runner.clock.to_redis_ms, deadline, REPLY_MARGIN_S)
        todo = plan(self.shape(record), cost, enforce, now, when)
        result = await self.runner.together(todo)
        if int(result[0]) == NEED_SEED:
            todo.seed(*(await seeds_of(self.pool, [record], now, pending))[0])
            # Batched again, so a spend the request gave up on (503) is given back too.
            result = await self.runner.together(todo)
        if int(result[0]) == LATE:
            raise TooLate()
        return decide(todo, result)

    async def spend_many(self, items: list[tuple[KeyRecord, int, bool]], now: datetime,
                         pending: Pending = no_pending) -> list[Decision | Exception]:
        """Spends for many keys (fast mode's sync: work no request waits on) in ONE round
        trip; only keys whose counts must be re-seeded from PostgreSQL take another. A
        Decision for each item that was spent, or the error that kept it from being spent.
        Raises only when the connection failed (then what ran is unknown)."""
        plans = [plan(self.shape(record), cost, enforce, now) for record, cost, enforce in items]
        results: list[Any] = await self.runner.run(plans, background=True)
        lost = [i for i, result in enumerate(results)
                if not isinstance(result, Exception) and int(result[0]) == NEED_SEED]
        if lost:  # seeded from PostgreSQL, all in one more round trip
            try:
                seeds = await seeds_of(self.pool, [plans[i].record for i in lost], now, pending)
            except SeedUnavailable as exc:
                for i in lost:
                    results[i] = exc
            else:
                for i, seed in zip(lost, seeds, strict=True):
                    plans[i].seed(*seed)
                again = await self.runner.run([plans[i] for i in lost], background=True)
                for i, result in zip(lost, again, strict=True):
                    results[i] = result
        return [result if isinstance(result, Exception) else decide(todo, result)
                for todo, result in zip(plans, results, strict=True)]

    async def _refund_late(self, todo: Plan, result: Any) -> None:
        decision = decide(todo, result)
        if decision.refund is not None:
            try:
                await self.refund(decision)
            except (RedisError, OSError) as exc:
                log.warning("a late spend could not be given back: %s", type(exc).__name__)

    async def learn_clock(self) -> None:
        await self.runner.learn_clock()

    async def aclose(self) -> None:
        await self.runner.aclose()

    async def refund(self, decision: Decision) -> None:
        """Gives back what ``decision`` spent (e.g. the upstream failed)."""
        if decision.refund is None:
            return
        keys, args = decision.refund()
        decision.refund = None
        await self.runner.call(keys, args)

    async def hit(self, tag: str, subject: str, windows: list[Window], now: datetime
                  ) -> Decision:
        """One request against rate windows of any subject (e.g. a dialect's user)."""
        numbers = leading_numbers(1, True) + subject_numbers(windows)
        result = await self.runner.call([state_key(tag, subject)], ["s", "", "", packed(numbers)])
        verdict, retry_ms = int(result[0]), int(result[1])
        return Decision(verdict=verdict, windows=states_of(windows, result), usage_limit=None,
                        usage_used=None, quota_limit=None, quota_used=None,
                        quota_period=None, quota_reset_s=None, spent=verdict == ALLOWED,
                        at=now, retry_after_s=max(-(-retry_ms // 1000), 1) if verdict else None,
                        clock_ms=int(result[-1]))

    async def peek(self, record: KeyRecord, now: datetime, pending: Pending = no_pending
                   ) -> Decision:
        """Where the key stands, spending nothing (self-service and the admin API)."""
        todo = plan(self.shape(record), 0, True, now, mode="p")
        result = await self.runner.call(todo.keys, todo.args)
        used_raw, qused_raw = result[2], result[3]
        live_usage = record.usage_limit is not None and used_raw != b""
        live_quota = bool(record.quota) and qused_raw != b""
        seeds = (0, 0)
        if (record.usage_limit is not None and not live_usage) or (record.quota
                                                                   and not live_quota):
            seeds = (await seeds_of(self.pool, [record], now, pending))[0]
        used = int(used_raw) if live_usage else seeds[0]
        qused = int(qused_raw) if live_quota else seeds[1]
        quota_reset = None
        if record.quota:
            end = periods.period_end(str(record.quota["period"]), now)
            quota_reset = max((end - now).total_seconds(), 0)
        return Decision(
            verdict=ALLOWED, retry_after_s=None, windows=states_of(todo.windows, result),
            usage_limit=record.usage_limit, usage_used=used,
            quota_limit=int(record.quota["limit"]) if record.quota else None,
            quota_used=qused if record.quota else None,
            quota_period=str(record.quota["period"]) if record.quota else None,
            quota_reset_s=quota_reset, spent=False, clock_ms=int(result[-1]))

    async def adjust_usage(self, record: KeyRecord, op: str, value: int) -> None:
        """Applies ``op`` (set | increment | decrement) to the live lifetime count (if Redis
        has none, the next request seeds it from PostgreSQL, which already has the change)."""
        await self.runner.call([key_state(record)], ["a", op, str(value)])


def stale_counts(record: KeyRecord) -> list[str]:
    """After a change of ``usage_limit`` or ``quota`` (or a deletion): the key's state, whose
    lifetime and quota counts stopped moving while a limit was absent, so must not be
    trusted again; they are forgotten (``forget``) and re-seeded from PostgreSQL on the next
    request, while the rate windows in the same state keep counting."""
    return [key_state(record)]
