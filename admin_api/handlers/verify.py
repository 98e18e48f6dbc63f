"""``POST /v1/verify``: the gateway's key checks for services that are not behind it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from admin_api.auth import Principal
from admin_api.errors import StoreUnavailable
from admin_api.models import VerifyRequest, VerifyResult
from admin_api.state import LIMITER, POOL, USAGE
from admin_api.views import respond
from gateway.errors import GATEWAY_ERRORS
from gateway.keyrecord import KeyRecord
from gateway.limits import decision as limits
from gateway.verification import Code
from gateway.verification import verify as verify_key


async def verify(request: web.Request, principal: Principal, body: VerifyRequest
                 ) -> web.Response:
    """Answers 200 with ``valid`` and ``code`` for any key; only a malformed request is an
    error. The same checks as the gateway, limits included: a valid key spends ``cost``
    units of its rate limits, quota and lifetime usage, exactly as a proxied request would.
    A root key verifies keys of its own organisation only."""
    now = datetime.now(UTC)
    verdict = await verify_key(
        request.app[POOL], body.key, now=now, provider=body.provider, required=body.scopes,
        within_org=principal.key.org_id if principal.key else None)
    record = verdict.record
    if record is None or verdict.code in (Code.INVALID_KEY, Code.INVALID_PROVIDER):
        return respond(VerifyResult(valid=False, code=verdict.code.value))
    found: dict[str, Any] = {
        "key_id": record.id, "org_id": record.org_id, "owner_id": record.owner_id,
        "environment": record.environment, "scopes": list(record.scopes),
        "expires_at": record.expires_at, "metadata": record.metadata,
        "missing_scopes": list(verdict.missing_scopes) or None}
    code = verdict.code.value
    if verdict.valid:
        code, counters = await _spend(request, record, body.cost, now)
        found |= counters
    valid = code == Code.VALID.value
    if body.cost:  # counted in the key's request history like a gateway request (a check
        # that spends nothing, cost 0, is not a request): allowed, or refused with the
        # status the gateway would have answered
        request.app[USAGE].outcome(record, 200 if valid else GATEWAY_ERRORS[code][0],
                                   "" if valid else code)
    return respond(VerifyResult(valid=valid, code=code, **found))


async def _spend(request: web.Request, record: KeyRecord, cost: int, now: datetime
                 ) -> tuple[str, dict[str, Any]]:
    counters: dict[str, Any] = {}
    if limits.has_limits(record):
        limiter, usage = request.app[LIMITER], request.app[USAGE]
        try:
            decision = await limiter.spend(record, cost, True, now, usage.pending)
        except RedisError as exc:  # BUSY, OOM…: the limits cannot be judged
            raise StoreUnavailable(f"the limits store refused the check "
                                   f"({type(exc).__name__}); retry later") from None
        if decision.usage_limit is not None and decision.usage_used is not None:
            counters["usage_remaining"] = max(decision.usage_limit - decision.usage_used, 0)
        if decision.windows:
            counters["rate_limit_remaining"] = min(s.remaining for s in decision.windows)
        counters["retry_after_s"] = decision.retry_after_s
        if decision.verdict == limits.RATE:
            return "rate_limited", counters
        if decision.verdict in (limits.QUOTA, limits.USAGE):
            return "usage_exceeded", counters
    if cost:
        request.app[USAGE].record(record.id, cost, now)
    return Code.VALID.value, counters
