"""Rate limits, quotas and lifetime usage, checked and spent in ONE atomic Redis round trip.

Counters live in Redis under the key's organisation as hash tag, so a key's own, its
owner's and its organisation's counters share a slot and one Lua script can judge them all:

- rate limits are sliding logs (a sorted set of request timestamps per window): at most
  ``limit`` units in any ``window_s`` seconds, exactly;
- the quota is a counter per period (the period start is in its name, so it resets itself);
- lifetime usage is a counter seeded from PostgreSQL, the source of truth.

A request refused by one limit spends no other. Counters Redis has lost (restart, eviction,
FLUSHALL) are re-seeded from PostgreSQL: the script says so and the caller retries with
seeds. What can be lost is usage not yet flushed to PostgreSQL (see ``gateway/usage.py``)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from redis.asyncio import Redis

from gateway import quota as periods
from gateway.keyrecord import KeyRecord

NEED_SEED = -1
ALLOWED, RATE, QUOTA, USAGE = 0, 1, 2, 3

_SPEND = """
local now, cost, enforce = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local usage_limit, quota_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local quota_ttl, member = tonumber(ARGV[6]), ARGV[7]
local usage_seed, quota_seed = ARGV[8], ARGV[9]
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
    redis.call('SET', KEYS[2], quota_seed, 'EX', quota_ttl, 'NX')
    v = redis.call('GET', KEYS[2])
  end
  qused = tonumber(v)
end
local verdict, retry = 0, 0
local windows = {}
for i = 3, #KEYS do
  local n = (i - 3) * 2 + 10
  local limit, window = tonumber(ARGV[n]), tonumber(ARGV[n + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  local reset = window
  local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if oldest[2] then reset = tonumber(oldest[2]) + window - now end
  if count + cost > limit then
    if verdict == 0 then verdict = 1 end
    local wait = window
    if cost <= limit then
      local nth = redis.call('ZRANGE', KEYS[i], count + cost - limit - 1, count + cost - limit - 1,
                             'WITHSCORES')
      if nth[2] then wait = tonumber(nth[2]) + window - now end
    end
    if wait > retry then retry = wait end
  end
  windows[#windows + 1] = {limit - count, reset}
end
if verdict == 0 and quota_limit >= 0 and qused + cost > quota_limit then
  verdict = 2
  retry = quota_ttl * 1000
end
if verdict == 0 and usage_limit >= 0 and used + cost > usage_limit then verdict = 3 end
local spend = verdict == 0 or not enforce
if spend then
  if usage_limit >= 0 then used = redis.call('INCRBY', KEYS[1], cost) end
  if quota_limit >= 0 then qused = redis.call('INCRBY', KEYS[2], cost) end
  for i = 3, #KEYS do
    local window = tonumber(ARGV[(i - 3) * 2 + 11])
    for j = 1, cost do
      redis.call('ZADD', KEYS[i], now, member .. ':' .. j)
    end
    redis.call('PEXPIRE', KEYS[i], window)
    windows[i - 2][1] = windows[i - 2][1] - cost
  end
end
local out = {verdict, retry, used, qused, spend and 1 or 0}
for _, w in ipairs(windows) do
  out[#out + 1] = w[1]
  out[#out + 1] = w[2]
end
return out
"""

_REFUND = """
local cost, member = tonumber(ARGV[1]), ARGV[2]
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DECRBY', KEYS[1], cost)
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DECRBY', KEYS[2], cost)
end
for i = 3, #KEYS do
  for j = 1, cost do redis.call('ZREM', KEYS[i], member .. ':' .. j) end
end
return 0
"""

_PEEK = """
local now = tonumber(ARGV[1])
local out = {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or ''}
for i = 3, #KEYS do
  local window = tonumber(ARGV[i - 1])
  local count = redis.call('ZCOUNT', KEYS[i], now - window + 1, '+inf')
  local reset = window
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[i], now - window + 1, '+inf', 'WITHSCORES',
                            'LIMIT', 0, 1)
  if oldest[2] then reset = tonumber(oldest[2]) + window - now end
  out[#out + 1] = count
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

SEED_USAGE = "SELECT usage_count FROM keys WHERE id = $1"
SEED_QUOTA = """SELECT COALESCE(sum(count), 0) FROM key_usage_daily
WHERE key_id = $1 AND day >= $2"""


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
    refund: tuple[list[str], int, str, bool, bool] | None = field(default=None, repr=False)

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


def _quota_key(record: KeyRecord, now: datetime) -> str:
    if not record.quota:
        return f"ks:{{{record.org_id}}}:q:-"
    period = str(record.quota["period"])
    start = int(periods.period_start(period, now).timestamp())
    return f"ks:{{{record.org_id}}}:q:{record.id}:{period}:{start}"


def _window_key(record: KeyRecord, window: Window) -> str:
    owner = record.owner_id or ""
    subject = {"key": f"k:{record.id}", "owner": f"o:{owner}", "org": "g"}[window.scope]
    return f"ks:{{{record.org_id}}}:r:{subject}:{window.window_s}"


class Limiter:
    def __init__(self, redis: Redis, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._spend = redis.register_script(_SPEND)
        self._refund = redis.register_script(_REFUND)
        self._peek = redis.register_script(_PEEK)
        self._adjust = redis.register_script(_ADJUST)
        self._members = (f"{os.getpid()}-{n}" for n in itertools.count())

    def _keys(self, record: KeyRecord, now: datetime, windows: list[Window]) -> list[str]:
        return [usage_key(record), _quota_key(record, now),
                *(_window_key(record, w) for w in windows)]

    async def _seeds(self, record: KeyRecord, now: datetime, pending: tuple[int, int]
                     ) -> tuple[int, int]:
        """Lifetime and period usage from PostgreSQL, plus what this process has not flushed."""
        used = await self.pool.fetchval(SEED_USAGE, record.id) or 0
        period_used = 0
        if record.quota:
            start = periods.period_start(str(record.quota["period"]), now).date()
            period_used = await self.pool.fetchval(SEED_QUOTA, record.id, start) or 0
        return int(used) + pending[0], int(period_used) + pending[1]

    async def spend(self, record: KeyRecord, cost: int, enforce: bool, now: datetime,
                    pending: tuple[int, int] = (0, 0)) -> Decision:
        windows = windows_of(record)
        keys = self._keys(record, now, windows)
        quota_limit = int(record.quota["limit"]) if record.quota else -1
        quota_ttl = 0
        if record.quota:
            end = periods.period_end(str(record.quota["period"]), now)
            quota_ttl = max(int((end - now).total_seconds()), 1)
        member = next(self._members)
        args: list[int | str] = [
            int(now.timestamp() * 1000), cost, "1" if enforce else "0",
            record.usage_limit if record.usage_limit is not None else -1, quota_limit,
            quota_ttl, member, "", ""]
        for window in windows:
            args += [window.limit, window.window_s * 1000]
        result = await self._spend(keys=keys, args=args)
        if int(result[0]) == NEED_SEED:
            used, period_used = await self._seeds(record, now, pending)
            args[7], args[8] = str(used), str(period_used)
            result = await self._spend(keys=keys, args=args)
        verdict, retry_ms, used, qused, spent = (int(x) for x in result[:5])
        states = [WindowState(w, max(int(result[5 + 2 * i]), 0),
                              max(int(result[6 + 2 * i]), 0) / 1000)
                  for i, w in enumerate(windows)]
        return Decision(
            verdict=verdict,
            retry_after_s=max(-(-retry_ms // 1000), 1) if verdict in (RATE, QUOTA) else None,
            windows=states,
            usage_limit=record.usage_limit,
            usage_used=used if record.usage_limit is not None else None,
            quota_limit=quota_limit if record.quota else None,
            quota_used=qused if record.quota else None,
            quota_period=str(record.quota["period"]) if record.quota else None,
            quota_reset_s=quota_ttl if record.quota else None,
            spent=bool(spent),
            refund=(keys, cost, member, record.usage_limit is not None, bool(record.quota))
            if spent else None)

    async def refund(self, decision: Decision) -> None:
        """Gives back what ``decision`` spent (e.g. the upstream failed)."""
        if decision.refund is None:
            return
        keys, cost, member, usage, quota = decision.refund
        await self._refund(keys=keys, args=[cost, member, "1" if usage else "0",
                                            "1" if quota else "0"])
        decision.refund = None

    async def peek(self, record: KeyRecord, now: datetime) -> Decision:
        """Where the key stands, spending nothing (self-service and the admin API)."""
        windows = windows_of(record)
        result = await self._peek(keys=self._keys(record, now, windows),
                                  args=[int(now.timestamp() * 1000),
                                        *(w.window_s * 1000 for w in windows)])
        used_raw, qused_raw = result[0], result[1]
        pending = (0, 0)
        if (record.usage_limit is not None and not used_raw) or (record.quota and not qused_raw):
            pending = await self._seeds(record, now, (0, 0))
        used = int(used_raw) if used_raw else pending[0] or record.usage_count
        qused = int(qused_raw) if qused_raw else pending[1]
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
        await self._adjust(keys=[usage_key(record)], args=[op, value])
