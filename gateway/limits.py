"""Rate limits, quotas and lifetime usage, checked and spent in ONE atomic Redis round trip.

Counters live in Redis under the key's organisation as hash tag, so a key's own, its
owner's and its organisation's counters share a slot and one Lua script can judge them all:

- rate limits are sliding logs (a sorted set of request timestamps per window): at most
  ``limit`` units in any ``window_s`` seconds, exactly;
- the quota is a counter per period (the period start is in its name, so it resets itself);
- lifetime usage is a counter seeded from PostgreSQL, the source of truth.

A request refused by one limit spends no other. Counters Redis has lost (restart, eviction,
FLUSHALL) are re-seeded from PostgreSQL: the script says so and the caller retries with
seeds. What can be lost is usage not yet flushed to PostgreSQL (see ``gateway/usage.py``).

A request's spend carries its deadline (in Redis's clock, see ``gateway/redisclock.py``): a
script that runs after it — Redis stalled, the request was answered 503 — spends nothing and
says so (``LATE``). Syncs of requests already admitted and served (fast mode) carry none."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg
from redis.exceptions import NoScriptError, RedisError

from gateway import quota as periods
from gateway.keycache import POSTGRES_FAILURES
from gateway.keyrecord import KeyRecord
from gateway.redisclient import Store, at_most_once
from gateway.redisclock import RedisClock

log = logging.getLogger(__name__)

NEED_SEED = -1
LATE = -2  # the script ran after the request's deadline: it spent nothing
# The script must have run this long before the request's deadline: its answer has to travel
# back. At most a tenth of what is left, so a short store deadline still leaves room.
REPLY_MARGIN_S = 0.05


def _reply_margin(deadline: float) -> float:
    return min(REPLY_MARGIN_S, max(deadline - time.time(), 0.0) / 10)
ALLOWED, RATE, QUOTA, USAGE = 0, 1, 2, 3

_SPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(ARGV[9])
if deadline > 0 and now > deadline then return {-2, now} end
local cost, enforce = tonumber(ARGV[1]), ARGV[2] == '1'
local need = math.max(cost, 1)  -- a cost-0 request is still refused by an exhausted limit
local usage_limit, quota_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local quota_expire_at, member = tonumber(ARGV[5]), ARGV[6] .. ':' .. ARGV[1]
local usage_seed, quota_seed = ARGV[7], ARGV[8]
local used, qused = 0, 0
if usage_limit >= 0 then
  local v = redis.call('GET', KEYS[1])
  if not v then
    if usage_seed == '' then return {-1} end
    redis.call('SET', KEYS[1], usage_seed, 'NX')
    v = redis.call('GET', KEYS[1])
  end
  used = tonumber(v)
end
if quota_limit >= 0 then
  local v = redis.call('GET', KEYS[2])
  if not v then
    if quota_seed == '' then return {-1} end
    redis.call('SET', KEYS[2], quota_seed, 'NX')
    redis.call('EXPIREAT', KEYS[2], quota_expire_at)
    v = redis.call('GET', KEYS[2])
  end
  qused = tonumber(v)
end
local function cost_of(m) return tonumber(string.match(m, ':(%d+)$')) end
local verdict, retry, blocking = 0, 0, 0
local windows = {}
local count = (#KEYS - 2) / 2
for w = 1, count do
  local log, sum = KEYS[1 + 2 * w], KEYS[2 + 2 * w]
  local limit, window = tonumber(ARGV[8 + 2 * w]), tonumber(ARGV[9 + 2 * w])
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
  if #expired > 0 then
    local freed = 0
    for _, m in ipairs(expired) do freed = freed + cost_of(m) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
    redis.call('DECRBY', sum, freed)
  end
  local inside = tonumber(redis.call('GET', sum) or '0')
  if inside < 0 or redis.call('ZCARD', log) == 0 then
    inside = 0
    redis.call('DEL', sum)
  end
  local reset = window
  local first = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if first[2] then reset = tonumber(first[2]) + window - now end
  if inside + need > limit then
    if verdict == 0 then verdict = 1 end
    local wait = window
    if need <= limit then
      -- Walk from the oldest entry until enough units will have left the window.
      local excess, freed, offset, found = inside + need - limit, 0, 0, false
      while not found do
        local page = redis.call('ZRANGE', log, offset, offset + 127, 'WITHSCORES')
        if #page == 0 then break end
        for k = 1, #page, 2 do
          freed = freed + cost_of(page[k])
          if freed >= excess then
            wait = tonumber(page[k + 1]) + window - now
            found = true
            break
          end
        end
        offset = offset + 128
      end
    end
    if wait > retry then
      retry = wait
      blocking = w
    end
  end
  windows[w] = {limit - inside, reset}
end
if verdict == 0 and quota_limit >= 0 and qused + need > quota_limit then
  verdict = 2
  retry = (quota_expire_at - 86400) * 1000 - now
end
if verdict == 0 and usage_limit >= 0 and used + need > usage_limit then verdict = 3 end
local spend = verdict == 0 or not enforce
if spend and cost > 0 then
  if usage_limit >= 0 then used = redis.call('INCRBY', KEYS[1], cost) end
  if quota_limit >= 0 then qused = redis.call('INCRBY', KEYS[2], cost) end
  for w = 1, count do
    local log, sum = KEYS[1 + 2 * w], KEYS[2 + 2 * w]
    local window = tonumber(ARGV[9 + 2 * w])
    redis.call('ZADD', log, now, member)
    redis.call('INCRBY', sum, cost)
    redis.call('PEXPIRE', log, window)
    redis.call('PEXPIRE', sum, window)
    windows[w][1] = windows[w][1] - cost
  end
end
local out = {verdict, retry, used, qused, spend and 1 or 0, blocking}
for _, w in ipairs(windows) do
  out[#out + 1] = w[1]
  out[#out + 1] = w[2]
end
out[#out + 1] = now
return out
"""

_REFUND = """
local cost, member = tonumber(ARGV[1]), ARGV[2] .. ':' .. ARGV[1]
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DECRBY', KEYS[1], cost)
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DECRBY', KEYS[2], cost)
end
for w = 1, (#KEYS - 2) / 2 do
  if redis.call('ZREM', KEYS[1 + 2 * w], member) == 1 then
    redis.call('DECRBY', KEYS[2 + 2 * w], cost)
  end
end
return 0
"""

_PEEK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or ''}
for w = 1, (#KEYS - 2) / 2 do
  local window = tonumber(ARGV[w])
  local live = redis.call('ZRANGEBYSCORE', KEYS[1 + 2 * w], now - window + 1, '+inf',
                          'WITHSCORES')
  local inside, reset = 0, window
  for k = 1, #live, 2 do
    inside = inside + tonumber(string.match(live[k], ':(%d+)$'))
    if k == 1 then reset = tonumber(live[2]) + window - now end
  end
  out[#out + 1] = inside
  out[#out + 1] = reset
end
return out
"""

# An operator's change to the lifetime count, applied to the live counter if there is one
# (if there is none, the next request seeds it from PostgreSQL, which already has it).
_ADJUST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local value = tonumber(ARGV[2])
if ARGV[1] == 'set' then redis.call('SET', KEYS[1], value)
elseif ARGV[1] == 'increment' then redis.call('INCRBY', KEYS[1], value)
else
  local now = tonumber(redis.call('GET', KEYS[1]))
  redis.call('SET', KEYS[1], math.max(now - value, 0))
end
return 1
"""

class SeedUnavailable(Exception):
    """Counters Redis lost cannot be re-seeded: PostgreSQL does not answer."""


class TooLate(Exception):
    """Redis ran the spend after the request's deadline (it was stalled): nothing was spent,
    and the request is answered 503 (it may have been already)."""


# Lifetime and period usage of many keys at once: (key id, first day of its period) pairs.
SEEDS = """
SELECT s.id, k.usage_count,
       (SELECT COALESCE(sum(d.count), 0) FROM key_usage_daily d
        WHERE d.key_id = s.id AND d.day >= s.since) AS period_used
FROM unnest($1::text[], $2::date[]) AS s(id, since) JOIN keys k ON k.id = s.id"""

QUOTA_MARGIN_S = 86400  # a period's counter outlives the period by a day, then goes
SHAPES_REMEMBERED = 100_000

Pending = Callable[[str, date], tuple[int, int]]


def _no_pending(key_id: str, since: date) -> tuple[int, int]:
    return 0, 0


@dataclass(frozen=True, slots=True)
class Window:
    scope: str  # key | owner | org
    limit: int
    window_s: int


@dataclass(frozen=True, slots=True)
class WindowState:
    window: Window
    remaining: int
    reset_s: float


@dataclass(slots=True)
class Decision:
    verdict: int  # ALLOWED, RATE, QUOTA or USAGE
    retry_after_s: int | None
    windows: list[WindowState]
    usage_limit: int | None
    usage_used: int | None
    quota_limit: int | None
    quota_used: int | None
    quota_period: str | None
    quota_reset_s: float | None
    spent: bool
    at: datetime | None = None  # when the units were spent (a refund books them back there)
    blocking: WindowState | None = None  # the window that refused, if one did
    refund: tuple[list[str], int, str, bool, bool] | None = field(default=None, repr=False)
    local: bool = False  # decided by this worker alone (limits_mode fast), not by Redis

    @property
    def allowed(self) -> bool:
        return self.verdict == ALLOWED


def windows_of(record: KeyRecord) -> list[Window]:
    found = [Window("key", int(r["limit"]), int(r["window_s"])) for r in record.rate_limits]
    if record.owner_id is not None:
        found += [Window("owner", int(r["limit"]), int(r["window_s"]))
                  for r in record.owner_rate_limits]
    found += [Window("org", int(r["limit"]), int(r["window_s"])) for r in record.org_rate_limits]
    return found


def has_limits(record: KeyRecord) -> bool:
    return bool(record.usage_limit is not None or record.quota or record.rate_limits
                or record.org_rate_limits or (record.owner_id and record.owner_rate_limits))


def usage_key(record: KeyRecord) -> str:
    return f"ks:{{{record.org_id}}}:u:{record.id}"


def quota_key(record: KeyRecord, quota: dict[str, Any] | None, now: datetime) -> str:
    if not quota:
        return f"ks:{{{record.org_id}}}:q:-"
    period = str(quota["period"])
    start = int(periods.period_start(period, now).timestamp())
    return f"ks:{{{record.org_id}}}:q:{record.id}:{period}:{start}"


def _window_keys(record: KeyRecord, window: Window) -> list[str]:
    """The sliding log of a window and the running sum of the units in it."""
    owner = record.owner_id or ""
    subject = {"key": f"k:{record.id}", "owner": f"o:{owner}", "org": "g"}[window.scope]
    log = f"ks:{{{record.org_id}}}:r:{subject}:{window.window_s}"
    return [log, log + ":s"]


@dataclass(frozen=True, slots=True)
class Shape:
    """What one key record's limits look like to Redis, worked out once per record."""

    record: KeyRecord
    windows: list[Window]
    window_keys: list[str]  # each window's sliding log (its subject), then its running sum
    window_args: list[int]  # each window's limit, then its length in ms
    usage_key: str
    quota_prefix: str  # the quota counter's key, but for the period's start

    @classmethod
    def of(cls, record: KeyRecord) -> Shape:
        windows = windows_of(record)
        quota = record.quota
        return cls(record, windows,
                   [k for w in windows for k in _window_keys(record, w)],
                   [a for w in windows for a in (w.limit, w.window_s * 1000)],
                   usage_key(record),
                   (f"ks:{{{record.org_id}}}:q:{record.id}:{quota['period']}:" if quota
                    else f"ks:{{{record.org_id}}}:q:-"))

    def quota_key(self, start: datetime | None) -> str:
        return self.quota_prefix + (str(int(start.timestamp())) if start else "")

    def keys(self, quota_start: datetime | None) -> list[str]:
        """The scripts' keys: lifetime usage, this period's quota, then the windows'."""
        return [self.usage_key, self.quota_key(quota_start), *self.window_keys]


@dataclass(slots=True)
class _Plan:
    """One spend, ready for the script: what it is for, and the script's keys and args."""

    record: KeyRecord
    cost: int
    now: datetime
    windows: list[Window]
    keys: list[str]
    args: list[int | str]
    quota_end: datetime | None

    @property
    def member(self) -> str:
        return str(self.args[5])


def _decide(plan: _Plan, result: list[Any]) -> Decision:
    """The script's answer as a Decision."""
    record, cost, now, quota_end = plan.record, plan.cost, plan.now, plan.quota_end
    verdict, retry_ms, used, qused, spent, blocking = (int(x) for x in result[:6])
    states = [WindowState(w, max(int(result[6 + 2 * i]), 0),
                          max(int(result[7 + 2 * i]), 0) / 1000)
              for i, w in enumerate(plan.windows)]
    return Decision(
        verdict=verdict,
        retry_after_s=max(-(-retry_ms // 1000), 1) if verdict in (RATE, QUOTA) else None,
        windows=states,
        usage_limit=record.usage_limit,
        usage_used=used if record.usage_limit is not None else None,
        quota_limit=int(record.quota["limit"]) if record.quota else None,
        quota_used=qused if record.quota else None,
        quota_period=str(record.quota["period"]) if record.quota else None,
        quota_reset_s=(quota_end - now).total_seconds() if quota_end else None,
        spent=bool(spent) and cost > 0,
        at=now,
        blocking=states[blocking - 1] if blocking else None,
        refund=(plan.keys, cost, plan.member, record.usage_limit is not None,
                bool(record.quota)) if spent and cost > 0 else None)


class Limiter:
    def __init__(self, redis: Store, pool: asyncpg.Pool) -> None:
        self.redis = redis
        self.pool = pool
        self._spend = redis.register_script(_SPEND)
        self._refund = redis.register_script(_REFUND)
        self._peek = redis.register_script(_PEEK)
        self._adjust = redis.register_script(_ADJUST)
        # Log entries must be unique across every limiter on every host, forever.
        prefix = secrets.token_hex(8)
        self._members = (f"{prefix}{n:x}" for n in itertools.count())
        self._shapes: dict[str, Shape] = {}
        self.clock = RedisClock()
        self._waiting: list[tuple[_Plan, asyncio.Future[list[Any]]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def shape(self, record: KeyRecord) -> Shape:
        """The record's shape, remembered while the (cached) record object is the same."""
        known = self._shapes.get(record.id)
        if known is None or known.record is not record:
            if len(self._shapes) >= SHAPES_REMEMBERED:
                self._shapes.clear()
            known = self._shapes[record.id] = Shape.of(record)
        return known

    async def _seeds(self, record: KeyRecord, now: datetime, pending: Pending
                     ) -> tuple[int, int]:
        return (await self._seeds_of([record], now, pending))[0]

    async def _seeds_of(self, records: list[KeyRecord], now: datetime, pending: Pending
                        ) -> list[tuple[int, int]]:
        """Lifetime and period usage from PostgreSQL (one query for all) plus what this
        process has not flushed. Pending is read first: a flush landing in between is counted
        twice (stricter), never missed."""
        since = [periods.bounds(str(r.quota["period"]), now)[0].date() if r.quota
                 else now.date() for r in records]
        unflushed = [pending(r.id, day) for r, day in zip(records, since, strict=True)]
        try:
            rows = await self.pool.fetch(SEEDS, [r.id for r in records], since)
        except POSTGRES_FAILURES as exc:
            raise SeedUnavailable(type(exc).__name__) from None
        stored = {row["id"]: (int(row["usage_count"]), int(row["period_used"])) for row in rows}
        return [(stored.get(r.id, (0, 0))[0] + extra[0], stored.get(r.id, (0, 0))[1] + extra[1])
                for r, extra in zip(records, unflushed, strict=True)]

    def _plan(self, record: KeyRecord, cost: int, enforce: bool, now: datetime,
              deadline: float | None = None) -> _Plan:
        shape = self.shape(record)
        quota_start = quota_end = None
        if record.quota:
            quota_start, quota_end = periods.bounds(str(record.quota["period"]), now)
        args: list[int | str] = [
            cost, "1" if enforce else "0",
            record.usage_limit if record.usage_limit is not None else -1,
            int(record.quota["limit"]) if record.quota else -1,
            int(quota_end.timestamp()) + QUOTA_MARGIN_S if quota_end else 0,
            next(self._members), "", "",
            0 if deadline is None else self.clock.to_redis_ms(deadline - _reply_margin(deadline)),
            *shape.window_args]
        return _Plan(record, cost, now, shape.windows, shape.keys(quota_start), args, quota_end)

    async def _seeded(self, plan: _Plan, pending: Pending) -> list[Any]:
        """Runs the spend again with the lost counters' values from PostgreSQL."""
        used, period_used = await self._seeds(plan.record, plan.now, pending)
        plan.args[6], plan.args[7] = str(used), str(period_used)
        sent = time.time()
        with at_most_once():
            result = list(await self._spend(keys=plan.keys, args=plan.args))
        self._observe(result, sent)
        return result

    async def spend(self, record: KeyRecord, cost: int, enforce: bool, now: datetime,
                    pending: Pending = _no_pending, deadline: float | None = None
                    ) -> Decision:
        """Checks and spends atomically. Spends a worker starts in the same turn of its event
        loop share one round trip (a pipeline); each is still its own atomic script.
        ``deadline`` (``time.time()`` terms): when the request stops waiting; a script that
        runs later spends nothing (``TooLate``)."""
        plan = self._plan(record, cost, enforce, now, deadline)
        result = await self._together(plan)
        if int(result[0]) == NEED_SEED:
            result = await self._seeded(plan, pending)
        if int(result[0]) == LATE:
            raise TooLate()
        return _decide(plan, result)

    def _together(self, plan: _Plan) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((plan, future))
        if len(self._waiting) == 1:  # the first of this turn sends them all, next turn
            loop.call_soon(self._send_waiting)
        return future

    def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._answer(batch))
        self._sending.add(task)  # keeps the task alive until it is done
        task.add_done_callback(self._sending.discard)

    async def _answer(self, batch: list[tuple[_Plan, asyncio.Future[list[Any]]]]) -> None:
        # A request that gave up waiting (its deadline passed: it got a 503) spends nothing.
        batch = [(plan, future) for plan, future in batch if not future.done()]
        if not batch:
            return
        try:
            results = await self._run([plan for plan, _ in batch])
        except BaseException as exc:  # the connection failed: every waiting spend learns it
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, Exception):
                        future.set_exception(exc)
                    else:
                        future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        late: list[tuple[_Plan, Any]] = []
        for (plan, future), result in zip(batch, results, strict=True):
            if future.done():  # the request gave up (503) while its script ran: give back
                late.append((plan, result))
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        # Only once every waiting request has its answer: none waits for another's refund.
        await asyncio.gather(*(self._refund_late(plan, result) for plan, result in late))

    async def spend_many(self, items: list[tuple[KeyRecord, int, bool]], now: datetime,
                         pending: Pending = _no_pending) -> list[Decision | Exception]:
        """Spends for many keys in ONE round trip (a pipeline of the same script); only keys
        whose counters must be re-seeded from PostgreSQL take another. A Decision for each
        item that was spent, or the error that kept it from being spent. Raises only when
        the connection failed (then what ran is unknown)."""
        plans = [self._plan(record, cost, enforce, now) for record, cost, enforce in items]
        results: list[Any] = await self._run(plans)
        lost = [i for i, result in enumerate(results)
                if not isinstance(result, Exception) and int(result[0]) == NEED_SEED]
        if lost:  # counters Redis lost: seeded from PostgreSQL, all in one more round trip
            try:
                seeds = await self._seeds_of([plans[i].record for i in lost], now, pending)
            except SeedUnavailable as exc:
                for i in lost:
                    results[i] = exc
            else:
                for i, (used, period_used) in zip(lost, seeds, strict=True):
                    plans[i].args[6], plans[i].args[7] = str(used), str(period_used)
                again = await self._run([plans[i] for i in lost])
                for i, result in zip(lost, again, strict=True):
                    results[i] = result
        return [result if isinstance(result, Exception) else _decide(plan, result)
                for plan, result in zip(plans, results, strict=True)]

    async def _run(self, plans: list[_Plan]) -> list[Any]:
        """The spend script for every plan, in one pipeline: a result (or the error) each."""
        results = await self._pipelined(plans)
        unknown = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if unknown:  # Redis restarted or flushed its scripts: none of these ran; load, retry
            await self.redis.script_load(_SPEND)
            again = await self._pipelined([plans[i] for i in unknown])
            for i, result in zip(unknown, again, strict=True):
                results[i] = result
        return results

    async def _pipelined(self, plans: list[_Plan]) -> list[Any]:
        sent = time.time()
        with at_most_once():
            async with self.redis.pipeline(transaction=False) as pipe:
                for plan in plans:
                    pipe.evalsha(self._spend.sha, len(plan.keys), *plan.keys, *plan.args)
                results = list(await pipe.execute(raise_on_error=False))
        received = time.time()
        for result in results:
            self._observe(result, sent, received)
        return results

    def _observe(self, result: Any, sent: float, received: float | None = None) -> None:
        """A script's answer ends with its ``TIME``: what it tells of Redis's clock."""
        if isinstance(result, list) and len(result) >= 2 and int(result[0]) != NEED_SEED:
            self.clock.observe(int(result[-1]), sent,
                               time.time() if received is None else received)

    async def _refund_late(self, plan: _Plan, result: Any) -> None:
        if isinstance(result, Exception) or int(result[0]) in (NEED_SEED, LATE):
            return
        decision = _decide(plan, result)
        if decision.refund is not None:
            try:
                await self.refund(decision)
            except (RedisError, OSError) as exc:
                log.warning("a late spend could not be given back: %s", type(exc).__name__)

    async def learn_clock(self) -> None:
        """Reads Redis's clock once, so the first spends of a fresh worker carry a deadline
        too (each spend's answer refines it afterwards)."""
        sent = time.time()
        seconds, micros = await self.redis.time()
        self.clock.observe(int(seconds) * 1000 + int(micros) // 1000, sent, time.time())

    async def hit(self, tag: str, subject: str, windows: list[Window], now: datetime
                  ) -> Decision:
        """One request against sliding windows of any subject (e.g. a dialect's user)."""
        keys = [f"ks:{{{tag}}}:u:-", f"ks:{{{tag}}}:q:-"]
        for window in windows:
            log = f"ks:{{{tag}}}:r:{subject}:{window.window_s}"
            keys += [log, log + ":s"]
        args: list[int | str] = [1, "1", -1, -1, 0, next(self._members), "", "", 0]
        for window in windows:
            args += [window.limit, window.window_s * 1000]
        with at_most_once():
            result = await self._spend(keys=keys, args=args)
        verdict, retry_ms = int(result[0]), int(result[1])
        states = [WindowState(w, max(int(result[6 + 2 * i]), 0),
                              max(int(result[7 + 2 * i]), 0) / 1000)
                  for i, w in enumerate(windows)]
        return Decision(verdict=verdict, windows=states, usage_limit=None, usage_used=None,
                        quota_limit=None, quota_used=None, quota_period=None,
                        quota_reset_s=None, spent=verdict == ALLOWED, at=now,
                        retry_after_s=max(-(-retry_ms // 1000), 1) if verdict else None)

    async def refund(self, decision: Decision) -> None:
        """Gives back what ``decision`` spent (e.g. the upstream failed)."""
        if decision.refund is None:
            return
        keys, cost, member, usage, quota = decision.refund
        decision.refund = None
        with at_most_once():
            await self._refund(keys=keys, args=[cost, member, "1" if usage else "0",
                                                "1" if quota else "0"])

    async def peek(self, record: KeyRecord, now: datetime, pending: Pending = _no_pending
                   ) -> Decision:
        """Where the key stands, spending nothing (self-service and the admin API)."""
        shape = self.shape(record)
        windows = shape.windows
        start = periods.bounds(str(record.quota["period"]), now)[0] if record.quota else None
        result = await self._peek(keys=shape.keys(start),
                                  args=[w.window_s * 1000 for w in windows])
        used_raw, qused_raw = result[0], result[1]
        live_usage = record.usage_limit is not None and used_raw
        live_quota = bool(record.quota) and qused_raw
        seeds = (0, 0)
        if not live_usage or (record.quota and not live_quota):
            seeds = await self._seeds(record, now, pending)
        used = int(used_raw) if live_usage else seeds[0]
        qused = int(qused_raw) if live_quota else seeds[1]
        states = [WindowState(w, max(w.limit - int(result[2 + 2 * i]), 0),
                              max(int(result[3 + 2 * i]), 0) / 1000)
                  for i, w in enumerate(windows)]
        quota_reset = None
        if record.quota:
            end = periods.period_end(str(record.quota["period"]), now)
            quota_reset = max((end - now).total_seconds(), 0)
        return Decision(
            verdict=ALLOWED, retry_after_s=None, windows=states,
            usage_limit=record.usage_limit, usage_used=used,
            quota_limit=int(record.quota["limit"]) if record.quota else None,
            quota_used=qused if record.quota else None,
            quota_period=str(record.quota["period"]) if record.quota else None,
            quota_reset_s=quota_reset, spent=False)

    async def adjust_usage(self, record: KeyRecord, op: str, value: int) -> None:
        """Applies ``op`` (set | increment | decrement) to the live lifetime counter."""
        with at_most_once():
            await self._adjust(keys=[usage_key(record)], args=[op, value])



def stale_counters(before: KeyRecord, after: KeyRecord, now: datetime) -> list[str]:
    """After a change of ``usage_limit`` or ``quota`` (or a deletion): counters that stopped
    moving while a limit was absent must not be trusted again; they go and are re-seeded from
    PostgreSQL on the next request."""
    return sorted({usage_key(before), quota_key(before, before.quota, now),
                   quota_key(after, after.quota, now)})
