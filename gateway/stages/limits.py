"""Rate limits, quota and lifetime usage: checked and spent in one atomic Redis call, last,
so a request any earlier stage refused spends nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from redis.exceptions import RedisError

from gateway import quota
from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.limitheaders import limit_headers
from gateway.limits import QUOTA, RATE, USAGE, Decision, has_limits
from gateway.metrics import SHADOW_EXCEEDED

log = logging.getLogger(__name__)


def _refusal(ex: Exchange, decision: Decision) -> GatewayError:
    headers = limit_headers(decision)
    if decision.verdict == RATE:
        tightest = min((s for s in decision.windows if s.remaining < ex.matched.cost),
                       key=lambda s: s.reset_s, default=None)
        what = "the rate limit"
        if tightest is not None:
            window = tightest.window
            shared = "" if window.scope == "key" else f" (shared by the {window.scope})"
            what = f"{window.limit} per {window.window_s} s{shared}"
        return GatewayError("rate_limited", f"rate limit of {what} reached; retry after "
                            f"{decision.retry_after_s} s", headers=headers)
    if decision.verdict == QUOTA:
        return GatewayError("usage_exceeded", f"the {decision.quota_period}ly quota of "
                            f"{decision.quota_limit} is used up; it resets in "
                            f"{decision.retry_after_s} s", headers=headers)
    assert decision.verdict == USAGE
    return GatewayError("usage_exceeded", f"the key's lifetime usage limit of "
                        f"{decision.usage_limit} is spent; ask an administrator to raise its "
                        "usage_limit or reset its usage", headers=headers)


async def spend(ex: Exchange, deps: Deps) -> None:
    key = ex.key
    if key is None:
        return
    route = ex.matched
    now = datetime.now(UTC)
    if has_limits(key):
        since = (quota.period_start(str(key.quota["period"]), now).date() if key.quota
                 else now.date())
        try:
            decision = await deps.limiter.spend(key, route.cost, route.enforce, now,
                                                deps.usage.pending(key.id, since))
        except (RedisError, OSError) as exc:
            log.warning("limits unavailable: %s", type(exc).__name__)
            raise GatewayError("store_unavailable") from None
        ex.decision = decision
        if not decision.allowed:
            if route.enforce:
                raise _refusal(ex, decision)
            SHADOW_EXCEEDED.labels(route=route.prefix).inc()
    if route.cost:
        deps.usage.record(key.id, route.cost, now)


async def give_back(ex: Exchange, deps: Deps) -> None:
    """The upstream failed and the route refunds: return what this request spent."""
    if ex.key is None or not ex.matched.refund_on_upstream_error:
        return
    if ex.decision is not None:
        try:
            await deps.limiter.refund(ex.decision)
        except (RedisError, OSError) as exc:
            log.warning("refund failed", extra={"error": type(exc).__name__})
    if ex.matched.cost:
        deps.usage.unrecord(ex.key.id, ex.matched.cost, datetime.now(UTC))


def response_headers(ex: Exchange) -> dict[str, str]:
    if ex.decision is None:
        return {}
    return limit_headers(ex.decision, shadow_exceeded=not ex.decision.allowed)
