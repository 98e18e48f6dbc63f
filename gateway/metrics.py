"""Prometheus metrics of the data plane."""

from __future__ import annotations

from prometheus_client import Counter

SHADOW_EXCEEDED = Counter(
    "keystile_shadow_limit_exceeded_total",
    "Requests over a limit that passed because the route enforces nothing (shadow mode)",
    ["route"])
