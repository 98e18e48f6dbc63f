"""Prometheus metrics of the data plane."""

from __future__ import annotations

from prometheus_client import Counter

FAIL_OPEN = Counter(
    "keystile_fail_open_total",
    "Requests judged without Redis: rate limits enforced per worker, or quotas skipped",
    ["kind"])
SHADOW_EXCEEDED = Counter(
    "keystile_shadow_limit_exceeded_total",
    "Requests over a limit that passed because the route enforces nothing (shadow mode)",
    ["route"])
