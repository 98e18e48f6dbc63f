"""Prometheus metrics of the data plane (and the admin API's request counter).

With several gateway workers, ``keystile gateway`` points PROMETHEUS_MULTIPROC_DIR at a
folder of its own before starting them, and ``/metrics`` on any worker reports the sum over
all of them."""

from __future__ import annotations

import functools
import os

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("keystile_requests_total", "Gateway requests by route, status and code",
                   ["route", "status", "code"])
LATENCY = Histogram("keystile_request_duration_seconds",
                    "Time from request to response headers, by route", ["route"],
                    buckets=BUCKETS)
UPSTREAM_LATENCY = Histogram("keystile_upstream_duration_seconds",
                             "Time the upstream took to send its response headers, by route",
                             ["route"], buckets=BUCKETS)
CACHE = Counter("keystile_key_cache_total",
                "Key lookups by where they were answered: worker (cache hit), negative "
                "(known unknown), redis (shared record), replica (database_read_url), "
                "postgres (the primary)",
                ["result"])
REDIS_ROUND_TRIPS = Counter("keystile_redis_round_trips_total",
                            "Round trips to Redis: one per command or pipeline sent")
STORE_ERRORS = Counter("keystile_store_errors_total", "Failed calls to a store", ["store"])
FAIL_OPEN = Counter(
    "keystile_fail_open_total",
    "Requests judged without Redis: rate limits enforced per worker, or quotas skipped",
    ["kind"])
SHADOW_EXCEEDED = Counter(
    "keystile_shadow_limit_exceeded_total",
    "Requests over a limit that passed because the route or the key enforces nothing "
    "(shadow mode)",
    ["route"])
FAST_OVER_ADMITTED = Counter(
    "keystile_fast_over_admitted_total",
    "Units a worker admitted on its own in fast mode that, when its sync reached Redis, were "
    "beyond a limit (the over-admission fast mode trades for fewer round trips)")
HISTORY_DROPPED = Counter(
    "keystile_request_history_dropped_total",
    "Requests left out of the request history (the console's charts) because PostgreSQL "
    "could not take it for so long that a process held its maximum")
FLUSH_LAG = Gauge("keystile_usage_flush_lag_seconds",
                  "Seconds since this process last wrote its usage to PostgreSQL "
                  "(the oldest across live workers)", multiprocess_mode="livemax")
CONNECTIONS_DROPPED = Counter(
    "keystile_connections_dropped_total",
    "Client connections a worker closed or refused, by reason: idle_timeout, header_timeout, "
    "body_timeout, evicted_idle (to make room at max_connections), too_many_connections "
    "(refused with 503: at max_connections and none idle)", ["reason"])
INVALIDATION_LAG = Histogram(
    "keystile_invalidation_lag_seconds",
    "Seconds from the admin API announcing a change to a worker applying it (both clocks: "
    "hosts' clock skew adds to it)", buckets=BUCKETS)
ADMIN_REQUESTS = Counter("keystile_admin_requests_total", "Admin API requests",
                         ["method", "route", "status"])
WEBHOOK_ATTEMPTS = Counter("keystile_webhook_attempts_total",
                           "Webhook delivery attempts by outcome: delivered (2xx), "
                           "retrying, failed (given up)", ["outcome"])


# The hot path's children, looked up once per label set (``labels()`` is slow per call).
@functools.lru_cache(maxsize=4096)
def requests(route: str, status: str, code: str) -> Counter:
    return REQUESTS.labels(route, status, code)


@functools.lru_cache(maxsize=1024)
def latency(route: str) -> Histogram:
    return LATENCY.labels(route)


@functools.lru_cache(maxsize=1024)
def upstream_latency(route: str) -> Histogram:
    return UPSTREAM_LATENCY.labels(route)


@functools.lru_cache(maxsize=8)
def cache(result: str) -> Counter:
    return CACHE.labels(result)


@functools.lru_cache(maxsize=8)
def connection_dropped_counter(reason: str) -> Counter:
    return CONNECTIONS_DROPPED.labels(reason)


def connection_dropped(reason: str) -> None:
    connection_dropped_counter(reason).inc()


def exposition() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def handler(request: web.Request) -> web.Response:
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
