"""What a client is told about its limits: the IETF draft ``RateLimit-*`` fields for the most
restrictive window (the quota counts as one), and ``X-Usage-*`` for the lifetime allowance."""

from __future__ import annotations

import functools
import math

from gateway.limits.decision import Decision, Window

_PERIOD_SECONDS = {"day": 86400, "week": 7 * 86400, "month": 31 * 86400}


@functools.lru_cache(maxsize=4096)
def _policy(windows: tuple[Window, ...], quota_limit: int | None, quota_period: str | None
            ) -> str:
    """``RateLimit-Policy``: the same for every request of a key (while its limits are)."""
    parts = [f"{w.limit};w={w.window_s}" for w in windows]
    if quota_limit is not None:
        parts.append(f"{quota_limit};w={_PERIOD_SECONDS[quota_period or 'day']}")
    return ", ".join(parts)


def limit_headers(decision: Decision, shadow_exceeded: bool = False) -> dict[str, str]:
    # The most restrictive window (the quota counts as one): the least room, and of those
    # the longest wait.
    best: tuple[int, int, float] | None = None  # limit, remaining, reset seconds
    for state in decision.windows:
        if (best is None or state.remaining < best[1]
                or (state.remaining == best[1] and state.reset_s > best[2])):
            best = (state.window.limit, state.remaining, state.reset_s)
    quota_limit = decision.quota_limit
    if quota_limit is not None and decision.quota_used is not None:
        room = max(quota_limit - decision.quota_used, 0)
        reset = decision.quota_reset_s or 0.0
        if best is None or room < best[1] or (room == best[1] and reset > best[2]):
            best = (quota_limit, room, reset)
    else:
        quota_limit = None
    headers: dict[str, str] = {}
    if best is not None:
        limit, remaining, reset = best
        headers["RateLimit-Limit"] = str(limit)
        headers["RateLimit-Remaining"] = "0" if shadow_exceeded else str(max(remaining, 0))
        headers["RateLimit-Reset"] = str(math.ceil(reset))
        headers["RateLimit-Policy"] = _policy(tuple(s.window for s in decision.windows),
                                              quota_limit, decision.quota_period)
    if decision.usage_limit is not None and decision.usage_used is not None:
        headers["X-Usage-Limit"] = str(decision.usage_limit)
        headers["X-Usage-Remaining"] = str(max(decision.usage_limit - decision.usage_used, 0))
    if decision.retry_after_s is not None and not decision.allowed and not shadow_exceeded:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers
