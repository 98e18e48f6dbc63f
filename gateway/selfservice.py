"""``GET /_keystile/usage``: a client sees where its own key stands — rate-limit windows,
quota and lifetime usage — authenticated by that key, spending nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web
from redis.exceptions import RedisError

from gateway.errors import GatewayError, render
from gateway.keyformat import hash_key
from gateway.requestid import request_id
from gateway.state import DEPS
from gateway.verification import Code, check_format, check_state

PATH = "/_keystile/usage"


def _when(now: datetime, seconds: float | None) -> str | None:
    return None if seconds is None else (now + timedelta(seconds=seconds)).isoformat()


async def usage(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    rid = request_id(request.headers)
    try:
        # Every credential convention the route table uses, in a stable order.
        extractors = sorted({r.extractor for r in deps.routes.routes},
                            key=lambda e: e.headers)
        raw = next((k for e in extractors if (k := e.extract(request.headers)) is not None),
                   None)
        if raw is None:
            raise GatewayError(Code.MISSING_KEY, "send your API key the way the routes expect "
                               "it (e.g. the X-API-Key header)")
        if check_format(raw) is not Code.VALID:
            raise GatewayError(Code.INVALID_KEY)
        key = await deps.keys.find(hash_key(raw))
        if key is None:
            raise GatewayError(Code.INVALID_KEY)
        now = datetime.now(UTC)
        code = check_state(key, now)
        if code is not Code.VALID:
            raise GatewayError(code)
        try:
            state = await deps.limiter.peek(key, now, deps.usage.pending)
        except (RedisError, OSError):
            raise GatewayError("store_unavailable") from None
    except GatewayError as error:
        response = render(request, error, rid)
        response.headers["X-Request-Id"] = rid
        return response
    body = {
        "key_id": key.id,
        "usage_count": state.usage_used,
        "usage_limit": state.usage_limit,
        "usage_remaining": None if state.usage_limit is None or state.usage_used is None
        else max(state.usage_limit - state.usage_used, 0),
        "quota": None if state.quota_limit is None else {
            "limit": state.quota_limit, "period": state.quota_period,
            "used": state.quota_used,
            "remaining": max(state.quota_limit - (state.quota_used or 0), 0),
            "resets_at": _when(now, state.quota_reset_s)},
        "rate_limits": [{"scope": s.window.scope, "limit": s.window.limit,
                         "window_s": s.window.window_s, "remaining": s.remaining,
                         "resets_at": _when(now, s.reset_s)} for s in state.windows],
    }
    return web.json_response(body, headers={"X-Request-Id": rid, "Cache-Control": "no-store"})
