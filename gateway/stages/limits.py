"""Rate limits, quota and lifetime usage: checked and spent in one atomic Redis call, last,
so a request any earlier stage refused spends nothing."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from redis.exceptions import RedisError

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.limits.decision import QUOTA, RATE, USAGE, Decision, has_limits, windows_of
from gateway.limits.exact import TooLate
from gateway.limits.headers import limit_headers
from gateway.limits.seeds import SeedUnavailable
from gateway.metrics import FAIL_OPEN, SHADOW_EXCEEDED, STORE_ERRORS

log = logging.getLogger(__name__)


_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}


def _refusal(ex: Exchange, decision: Decision) -> GatewayError:
    headers = limit_headers(decision)
    if decision.verdict == RATE:
        what = "the rate limit"
        if decision.blocking is not None:
            window = decision.blocking.window
            shared = "" if window.scope == "key" else f" (shared by the {window.scope})"
            what = f"{window.limit} per {window.window_s} s{shared}"
        return GatewayError("rate_limited", f"rate limit of {what} reached; retry after "
                            f"{decision.retry_after_s} s", headers=headers)
    if decision.verdict == QUOTA:
        period = _ADJECTIVE.get(decision.quota_period or "", "")
        return GatewayError("usage_exceeded", f"the {period} quota of {decision.quota_limit} "
                            f"has too little left for this request (cost {ex.matched.cost}); "
                            f"it resets in {decision.retry_after_s} s", headers=headers)
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
    enforce = route.enforce and not key.shadow_limits
    if has_limits(key):
        try:
            decision = deps.fast.admit(key, route.cost, enforce, now) if deps.fast else None
            if decision is None:
                pending = deps.fast.pending if deps.fast else deps.usage.pending
                # The request's store deadline (app.handle): a script Redis runs after it
                # spends nothing, since the request was answered 503 by then.
                left = ex.started + deps.store_timeout_s - time.perf_counter()
                decision = await deps.limiter.spend(key, route.cost, enforce, now,
                                                    pending, deadline=time.time() + left)
                if deps.fast is not None:
                    deps.fast.learn(key, decision, now)
        except SeedUnavailable as exc:  # re-seeding lost counters needs PostgreSQL
            STORE_ERRORS.labels(store="postgres").inc()
            log.warning("limits cannot be seeded: %s", exc)
            raise GatewayError("store_unavailable") from None
        except TooLate:  # Redis was stalled past the deadline: not spent, so not served
            STORE_ERRORS.labels(store="redis").inc()
            log.warning("limits store answered after the request's deadline")
            raise GatewayError("store_unavailable", "the key's limits could not be checked "
                               "in time (their store is slow); retry later") from None
        except (RedisError, OSError) as exc:
            STORE_ERRORS.labels(store="redis").inc()
            log.warning("limits store unavailable: %s", type(exc).__name__)
            _without_redis(ex, deps)
            decision = None
        ex.decision = decision
        if decision is not None and not decision.allowed:
            if enforce:
                raise _refusal(ex, decision)
            SHADOW_EXCEEDED.labels(route=route.prefix).inc()
    if route.cost:
        deps.usage.record(key.id, route.cost, now)


def _without_redis(ex: Exchange, deps: Deps) -> None:
    """The failure policies: quotas and lifetime limits fail closed unless configured open;
    rate limits fall back to per-worker windows unless configured closed."""
    key, route, policy = ex.key, ex.matched, deps.settings
    assert key is not None
    if not route.enforce or key.shadow_limits:  # shadow mode observes; it never refuses
        FAIL_OPEN.labels(kind="shadow").inc()
        return
    if key.quota or key.usage_limit is not None:
        if policy.quotas_without_redis == "closed":
            raise GatewayError("store_unavailable", "usage limits cannot be checked right now "
                               "(their store is unreachable); retry later")
        FAIL_OPEN.labels(kind="quota").inc()
    if windows_of(key):
        if policy.rate_limits_without_redis == "closed":
            raise GatewayError("store_unavailable", "rate limits cannot be checked right now "
                               "(their store is unreachable); retry later")
        FAIL_OPEN.labels(kind="rate_limit").inc()
        allowed, retry = deps.local_limiter.admit(key, route.cost)
        if not allowed:
            raise GatewayError("rate_limited", f"rate limit reached; retry after {retry} s",
                               headers={"Retry-After": str(retry)})


async def give_back(ex: Exchange, deps: Deps) -> None:
    """The upstream failed and the route refunds: return what this request spent."""
    if ex.key is None or not ex.matched.refund_on_upstream_error:
        return
    spent_at = datetime.now(UTC)
    if ex.decision is not None and ex.decision.local:
        if deps.fast is not None:
            deps.fast.give_back(ex.key, ex.matched.cost, spent_at)
    elif ex.decision is not None:
        spent_at = ex.decision.at or spent_at
        try:
            await deps.limiter.refund(ex.decision)
        except (RedisError, OSError) as exc:
            log.warning("refund failed: %s", type(exc).__name__)
    if ex.matched.cost:
        deps.usage.unrecord(ex.key.id, ex.matched.cost, spent_at)


def response_headers(ex: Exchange) -> dict[str, str]:
    if ex.decision is None:
        return {}
    return limit_headers(ex.decision, shadow_exceeded=not ex.decision.allowed)
