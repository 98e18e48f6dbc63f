"""A key's usage: live counters from Redis (lifetime, quota, rate-limit windows) and the
daily history from PostgreSQL; changes to the lifetime count; requests over time and the
keys being limited now, from the history the gateway writes behind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from redis.exceptions import RedisError

from admin_api import auth
from admin_api.auth import Principal
from admin_api.changes import Changes
from admin_api.errors import REQUEST_ID, Unprocessable
from admin_api.handlers.keys import locked
from admin_api.models import (
    MAX_COUNT,
    DailyUsage,
    LimitedKey,
    LimitedList,
    LimitedQuery,
    QuotaUsage,
    RateLimitUsage,
    SeriesCounts,
    SeriesPoint,
    UsageChange,
    UsageOut,
    UsageSeries,
    UsageSeriesQuery,
)
from admin_api.repository import audit, keys, rollups
from admin_api.state import LIMITER, POOL, REDIS, USAGE
from admin_api.views import respond
from gateway import thresholds
from gateway.database import Queryable
from gateway.keyrecord import KeyRecord
from gateway.limits.exact import Limiter
from gateway.limits.plan import key_state
from gateway.limits.seeds import Pending

HISTORY_DAYS = 30


async def usage_of(conn: Queryable, limiter: Limiter, key: KeyRecord,
                   pending: Pending) -> UsageOut:
    now = datetime.now(UTC)
    live = await limiter.peek(key, now, pending)
    history = await keys.daily(conn, key.id, (now - timedelta(days=HISTORY_DAYS - 1)).date())
    # Redis counts a lifetime only for a key with a limit; without one, PostgreSQL's count.
    used = (live.usage_used if key.usage_limit is not None and live.usage_used is not None
            else key.usage_count)
    quota = None
    if live.quota_limit is not None and live.quota_period is not None:
        quota = QuotaUsage(limit=live.quota_limit, period=live.quota_period,
                           used=live.quota_used or 0,
                           resets_at=now + timedelta(seconds=live.quota_reset_s or 0))
    return UsageOut(
        usage_count=used,
        usage_limit=key.usage_limit,
        usage_remaining=None if key.usage_limit is None else max(key.usage_limit - used, 0),
        quota=quota,
        rate_limits=[RateLimitUsage(limit=s.window.limit, window_s=s.window.window_s,
                                    remaining=s.remaining,
                                    resets_at=now + timedelta(seconds=s.reset_s))
                     for s in live.windows if s.window.scope == "key"],
        daily=[DailyUsage(day=row["day"], count=row["count"]) for row in history],
    )


async def get_usage(request: web.Request, principal: Principal) -> web.Response:
    key_id = request.match_info["id"]
    pool = request.app[POOL]
    key = auth.visible(principal, await keys.get(pool, key_id), key_id)
    return respond(await usage_of(pool, request.app[LIMITER], key, request.app[USAGE].pending))


async def change_usage(request: web.Request, principal: Principal, body: UsageChange
                       ) -> web.Response:
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        key = await locked(conn, principal, request.match_info["id"])
        auth.require_not_own_usage_lowered(principal, key, body.op)
        if body.op == "increment" and key.usage_count + body.value > MAX_COUNT:
            raise Unprocessable(f"value: the count would exceed {MAX_COUNT}",
                                code="validation_failed",
                                fields=[{"field": "value", "message": "too large"}])
        await changes.key(conn, key.id)
        updated = await keys.change_usage(conn, key.id, body.op, body.value)
        if updated.usage_count < key.usage_count:
            await thresholds.forget_usage(conn, key.id)
        await thresholds.detect(conn, {key.id: updated.usage_count - key.usage_count}, {})
        await audit.record(conn, principal.actor, "key.usage", target_type="key",
                           target_id=key.id, org_id=key.org_id,
                           changes={"op": body.op, "value": body.value,
                                    "usage_count": [key.usage_count, updated.usage_count]},
                           request_id=request[REQUEST_ID])
    await changes.announce(request.app[POOL], request.app[REDIS])
    # The live counter follows at once, so the gateway honours the change immediately; if
    # Redis cannot take it now, the counter goes instead (re-seeded from PostgreSQL later).
    try:
        await request.app[LIMITER].adjust_usage(key, body.op, body.value)
    except (RedisError, OSError):
        fallback = Changes()
        async with request.app[POOL].acquire() as conn, conn.transaction():
            await fallback.counters(conn, [key_state(key)])
        await fallback.announce(request.app[POOL], request.app[REDIS])
    fresh = await keys.get(request.app[POOL], key.id)
    assert fresh is not None
    return respond(await usage_of(request.app[POOL], request.app[LIMITER], fresh,
                                  request.app[USAGE].pending))


def _counts(rows: list[asyncpg.Record]) -> dict[str, Any]:
    counts: dict[str, Any] = {"requests": 0, "forwarded": 0, "refused": {}, "statuses": {}}
    for row in rows:
        n, status = row["count"], str(row["status"])
        counts["requests"] += n
        counts["statuses"][status] = counts["statuses"].get(status, 0) + n
        if row["code"]:
            counts["refused"][row["code"]] = counts["refused"].get(row["code"], 0) + n
        else:
            counts["forwarded"] += n
    return counts


async def _subject(request: web.Request, principal: Principal, query: UsageSeriesQuery
                   ) -> rollups.Subject:
    if query.key_id is not None:
        if query.owner_id is not None or query.org_id is not None:
            raise Unprocessable("key_id names one key; leave owner_id and org_id out",
                                code="validation_failed")
        key = auth.visible(principal, await keys.get(request.app[POOL], query.key_id),
                           query.key_id)
        return rollups.Subject(key_id=key.id)
    org_id = auth.org_scope(principal, query.org_id)
    if query.owner_id is not None and org_id is None:
        raise Unprocessable("owner_id: owner ids are per organisation; send org_id with it",
                            code="validation_failed")
    return rollups.Subject(org_id=org_id, owner_id=query.owner_id)


async def get_series(request: web.Request, principal: Principal, query: UsageSeriesQuery
                     ) -> web.Response:
    subject = await _subject(request, principal, query)
    range_ = rollups.RANGES[query.range]
    since, until = rollups.window(range_, datetime.now(UTC))
    rows = await rollups.series(request.app[POOL], subject, range_, since, until)
    by_step: dict[datetime, list[asyncpg.Record]] = {}
    for row in rows:
        by_step.setdefault(row["at"], []).append(row)
    steps = [since + timedelta(seconds=range_.step_s * i) for i in range(range_.points)]
    return respond(UsageSeries(
        range=query.range, step_seconds=range_.step_s, since=since, until=until,
        points=[SeriesPoint(at=at, **_counts(by_step.get(at, []))) for at in steps],
        totals=SeriesCounts(**_counts(rows))))


async def get_limited(request: web.Request, principal: Principal, query: LimitedQuery
                      ) -> web.Response:
    org_id = auth.org_scope(principal, query.org_id)
    rows = await rollups.limited(request.app[POOL], org_id, query.minutes, query.limit)
    return respond(LimitedList(minutes=query.minutes,
                               data=[LimitedKey.model_validate(dict(r)) for r in rows]))
