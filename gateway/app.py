"""The gateway application of one worker: health endpoints, then the pipeline and the proxy
for every other request. It owns its PostgreSQL pool, Redis client, upstream client and
the invalidation listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from redis.exceptions import RedisError

from gateway import gcpolicy, invalidation, logfilter, metrics, pipeline, proxy, selfservice
from gateway.database import create_pool
from gateway.deadlines import Deadlines
from gateway.deps import Deps
from gateway.errors import GatewayError, render
from gateway.exchange import Exchange
from gateway.keycache import KeyLookup, LocalCache
from gateway.limits.exact import Limiter
from gateway.limits.fast import FastLimiter
from gateway.limits.local import LocalLimiter
from gateway.providers import ProviderLookup
from gateway.readiness import probe
from gateway.redisclient import create_redis
from gateway.requestid import request_id
from gateway.routing import RouteTable
from gateway.settings import Settings
from gateway.stages import limits
from gateway.state import DEADLINES, DEPS, EXCHANGE, LISTENING, SETTINGS
from gateway.upstream import UpstreamClient
from gateway.usage import UsageRecorder

log = logging.getLogger(__name__)



async def handle(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    ex = Exchange(request, request_id(request.headers))
    deps = request.app[DEPS]
    code = ""
    try:
        deadlines = request.app[DEADLINES]
        with deadlines.start() as deadline:
            try:
                await pipeline.run(ex, deps)
            except (asyncio.CancelledError, TimeoutError) as exc:
                if isinstance(exc, asyncio.CancelledError) and not deadlines.overran(deadline):
                    raise
                raise GatewayError("store_unavailable", "the key could not be checked in "
                                   "time (a store is slow or unreachable); retry later"
                                   ) from None
        response = await proxy.forward(ex, deps)
        code = ex.error or ""
    except GatewayError as error:
        if error.code in ("upstream_unavailable", "upstream_timeout"):
            await limits.give_back(ex, deps)
        code = ex.error = error.code
        response = render(request, error, ex.request_id)
        response.headers["X-Request-Id"] = ex.request_id
    except Exception:  # a bug: answer in the usual shape, without the trace
        log.exception("unexpected gateway error, request %s", ex.request_id)
        code = ex.error = "internal_error"
        response = render(request, GatewayError(code), ex.request_id)
        response.headers["X-Request-Id"] = ex.request_id
    route = ex.route.prefix if ex.route else "-"
    status = "499" if code == proxy.CLIENT_CLOSED else str(response.status)
    metrics.requests(route, status, code).inc()
    if ex.key is not None:
        deps.usage.outcome(ex.key, int(status), code)
    # To the response headers: a long streamed body is the upstream's, not the gateway's time.
    headers_s = ex.headers_s if ex.headers_s is not None else time.perf_counter() - started
    metrics.latency(route).observe(headers_s)
    response[EXCHANGE] = ex  # for the access log
    return response


async def _no_early_continue(request: web.Request) -> None:
    return None


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    probes = [probe(deps.keys.pool.fetchval("SELECT 1")), probe(deps.keys.redis.ping())]
    if deps.keys.replica is not None:
        probes.append(probe(deps.keys.replica.fetchval("SELECT 1")))
    postgres, redis, *replica = await asyncio.gather(*probes)
    checks = {"postgres": postgres, "redis": redis,
              "invalidations": "ok" if request.app[LISTENING].is_set() else "not subscribed"}
    ready = all(v == "ok" for v in checks.values())
    if replica:  # reported, but not needed: the primary answers while it is down
        checks["postgres_replica"] = replica[0]
    return web.json_response({"status": "ok" if ready else "unavailable", "checks": checks},
                             status=200 if ready else 503)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    gw = settings.gateway
    pool = await create_pool(settings.database_url, settings.stores)
    try:
        # No connection at start: a replica that is down must not keep the gateway from
        # starting (the primary answers meanwhile).
        replica = (await create_pool(settings.database_read_url,
                                     settings.stores.model_copy(update={"pool_min_size": 0}))
                   if settings.database_read_url else None)
    except BaseException:
        await pool.close()
        raise
    redis = create_redis(settings.redis_url, settings.stores)
    upstream = UpstreamClient(gw.upstream_ca_file, client_cert=gw.upstream_client_cert)
    cache = LocalCache(gw.cache_size, gw.cache_ttl_s, gw.negative_ttl_s,
                       gw.cache_ttl_unsubscribed_s, app[LISTENING])
    # Providers are few and cheap to read: re-read often whether or not the channel is heard.
    providers = ProviderLookup(pool, gw.cache_ttl_unsubscribed_s)
    usage = UsageRecorder()
    limiter = Limiter(redis, pool)
    fast = (FastLimiter(limiter, gw.fast_sync_interval_s, gw.fast_unsynced_share,
                        usage.pending) if gw.limits_mode == "fast" else None)
    lookup = KeyLookup(cache, redis, pool, gw.redis_cache_ttl_s, replica)
    app[DEPS] = Deps(gw, RouteTable(settings.routes), lookup, providers, upstream, limiter,
                     usage, LocalLimiter(), settings.stores.timeout_s, fast)

    def apply(change: invalidation.Change) -> None:
        kind, ident = change.kind, change.ident
        lookup.heard(change.position)
        if kind == "all":  # (re)subscribed: changes may have gone unheard
            lookup.unfence()
        if fast is not None:
            fast.forget(kind, ident)
        if kind == "key":
            cache.drop(key_id=ident)
        elif kind == "org":
            cache.drop(org_id=ident)
            providers.clear()
        else:
            cache.drop()
            providers.clear()

    async def learn_clock() -> None:
        with contextlib.suppress(RedisError, OSError):  # then the first spend teaches it
            await limiter.learn_clock()

    app[DEADLINES] = deadlines = Deadlines(settings.stores.timeout_s)
    clock = asyncio.create_task(learn_clock())
    listener = asyncio.create_task(invalidation.listen(redis, apply, app[LISTENING]))
    collector = asyncio.create_task(gcpolicy.run())
    stop_syncing, stop_flushing = asyncio.Event(), asyncio.Event()
    syncer = asyncio.create_task(fast.run(stop_syncing)) if fast is not None else None
    flusher = asyncio.create_task(usage.run(pool, gw.usage_flush_interval_s, stop_flushing))
    try:
        yield
    finally:
        stop_syncing.set()
        if syncer is not None:
            await syncer  # sends what fast mode admitted since its last sync (a re-seed
            # meanwhile reads the unflushed usage, so the flush waits for it)
        stop_flushing.set()
        await flusher  # writes what is still pending
        for task in (clock, listener, collector):
            await _cancel(task)
        upstream.close()
        await limiter.aclose()
        deadlines.close()
        await redis.aclose()
        await pool.close()
        if replica is not None:
            await replica.close()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancels a background task and waits for its end — cancelling it again while it runs:
    on Python 3.11 a cancellation that arrives just as an ``asyncio.wait_for`` inside the task
    completes is lost (the task runs on, and a shutdown waiting for it never ends)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """Health answers too carry a request id (proxied and refused ones set their own)."""
    if "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = request_id(request.headers)


def create_app(settings: Settings) -> web.Application:
    logfilter.install()
    gw = settings.gateway
    # The HTTP parser's own limits sit well above the configured ones, so requests over the
    # configured limits get a 431 from the pipeline; only grossly oversized ones are cut off
    # by the parser itself (400).
    app = web.Application(client_max_size=gw.max_body_bytes, handler_args={
        "max_field_size": max(8190, 4 * gw.max_header_bytes),
        "max_headers": 4 * gw.max_header_count})
    app[SETTINGS] = settings
    app[LISTENING] = asyncio.Event()
    app.cleanup_ctx.append(_resources)
    app.on_response_prepare.append(_request_id_header)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(selfservice.PATH, selfservice.usage)
    if gw.metrics:
        app.router.add_get("/metrics", metrics.handler)
    # 100-continue is sent by the proxy once the pipeline has passed, not before.
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle, expect_handler=_no_early_continue)
    return app
