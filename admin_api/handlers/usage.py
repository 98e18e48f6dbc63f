"""A key's usage: lifetime count, quota period, rate-limit windows and daily history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from admin_api import auth
from admin_api.auth import Principal
from admin_api.changes import Changes
from admin_api.errors import REQUEST_ID, Unprocessable
from admin_api.handlers.keys import locked
from admin_api.models import (
    MAX_COUNT,
    DailyUsage,
    QuotaUsage,
    RateLimitUsage,
    UsageChange,
    UsageOut,
)
from admin_api.repository import audit, keys
from admin_api.state import POOL, REDIS
from admin_api.views import respond
from gateway import quota
from gateway.database import Queryable
from gateway.keyrecord import KeyRecord

HISTORY_DAYS = 30


async def usage_of(conn: Queryable, key: KeyRecord) -> UsageOut:
    now = datetime.now(UTC)
    quota_usage = None
    if key.quota:
        period = str(key.quota["period"])
        used = await keys.used_since(conn, key.id, quota.period_start(period, now).date())
        quota_usage = QuotaUsage(limit=int(key.quota["limit"]), period=period, used=used,
                                 resets_at=quota.period_end(period, now))
    history = await keys.daily(conn, key.id, (now - timedelta(days=HISTORY_DAYS - 1)).date())
    remaining = None if key.usage_limit is None else max(key.usage_limit - key.usage_count, 0)
    return UsageOut(
        usage_count=key.usage_count,
        usage_limit=key.usage_limit,
        usage_remaining=remaining,
        quota=quota_usage,
        # Windows hold nothing until the gateway counts requests in Redis.
        rate_limits=[RateLimitUsage(limit=int(r["limit"]), window_s=int(r["window_s"]),
                                    remaining=int(r["limit"]), resets_at=None)
                     for r in key.rate_limits],
        daily=[DailyUsage(day=row["day"], count=row["count"]) for row in history],
    )


async def get_usage(request: web.Request, principal: Principal) -> web.Response:
    key_id = request.match_info["id"]
    pool = request.app[POOL]
    key = auth.visible(principal, await keys.get(pool, key_id), key_id)
    return respond(await usage_of(pool, key))


async def change_usage(request: web.Request, principal: Principal, body: UsageChange
                       ) -> web.Response:
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        key = await locked(conn, principal, request.match_info["id"])
        auth.require_not_own_limits(principal, key, {"usage_limit"})
        if body.op == "increment" and key.usage_count + body.value > MAX_COUNT:
            raise Unprocessable(f"value: the count would exceed {MAX_COUNT}",
                                code="validation_failed",
                                fields=[{"field": "value", "message": "too large"}])
        await changes.key(conn, key.id)
        updated = await keys.change_usage(conn, key.id, body.op, body.value)
        await audit.record(conn, principal.actor, "key.usage", target_type="key",
                           target_id=key.id, org_id=key.org_id,
                           changes={"op": body.op, "value": body.value,
                                    "usage_count": [key.usage_count, updated.usage_count]},
                           request_id=request[REQUEST_ID])
        out = await usage_of(conn, updated)
    await changes.announce(request.app[REDIS])
    return respond(out)
