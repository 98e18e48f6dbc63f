"""What a client is told about its limits: the IETF draft ``RateLimit-*`` fields for the most
restrictive window (the quota counts as one), and ``X-Usage-*`` for the lifetime allowance."""

from __future__ import annotations

import math

from gateway.limits.decision import Decision

_PERIOD_SECONDS = {"day": 86400, "week": 7 * 86400, "month": 31 * 86400}


def limit_headers(decision: Decision, shadow_exceeded: bool = False) -> dict[str, str]:
    # (limit, remaining, reset seconds, window seconds) of every window, quota included.
    windows = [(s.window.limit, s.remaining, s.reset_s, s.window.window_s)
               for s in decision.windows]
    if decision.quota_limit is not None and decision.quota_used is not None:
        windows.append((decision.quota_limit, max(decision.quota_limit - decision.quota_used, 0),
                        decision.quota_reset_s or 0.0,
                        _PERIOD_SECONDS[decision.quota_period or "day"]))
    headers: dict[str, str] = {}
    if windows:
        limit, remaining, reset, _ = min(windows, key=lambda w: (w[1], -w[2]))
        headers["RateLimit-Limit"] = str(limit)
        headers["RateLimit-Remaining"] = "0" if shadow_exceeded else str(max(remaining, 0))
        headers["RateLimit-Reset"] = str(math.ceil(reset))
        headers["RateLimit-Policy"] = ", ".join(f"{w[0]};w={w[3]}" for w in windows)
    if decision.usage_limit is not None and decision.usage_used is not None:
        headers["X-Usage-Limit"] = str(decision.usage_limit)
        headers["X-Usage-Remaining"] = str(max(decision.usage_limit - decision.usage_used, 0))
    if decision.retry_after_s is not None and not decision.allowed and not shadow_exceeded:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers
