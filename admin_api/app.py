"""The admin application: routes, middleware and the store connections it owns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from admin_api import console, dialects
from admin_api.changes import drain_forever
from admin_api.errors import Handler, add_standard_headers, error_middleware
from admin_api.handlers.meta import OPENAPI, package_version
from admin_api.openapi import build
from admin_api.routes import ROUTES, add_routes
from admin_api.state import LIMITER, POOL, REDIS, SENDER, SETTINGS, USAGE
from admin_api.webhooks import expiry
from admin_api.webhooks.delivery import Sender
from gateway import logfilter, rollups
from gateway.database import create_pool
from gateway.limits.exact import Limiter
from gateway.metrics import ADMIN_REQUESTS
from gateway.redisclient import create_redis
from gateway.secretbox import parse_key
from gateway.settings import Settings
from gateway.usage import UsageRecorder

log = logging.getLogger(__name__)


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[POOL] = await create_pool(settings.database_url, settings.stores)
    yield
    await app[POOL].close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = create_redis(app[SETTINGS].redis_url, app[SETTINGS].stores)
    yield
    await app[REDIS].aclose()


async def _limits(app: web.Application) -> AsyncIterator[None]:
    """POST /v1/verify spends limits like the gateway and writes usage behind the same way."""
    app[LIMITER] = Limiter(app[REDIS], app[POOL])
    app[USAGE] = UsageRecorder()
    stop = asyncio.Event()
    flusher = asyncio.create_task(app[USAGE].run(
        app[POOL], app[SETTINGS].gateway.usage_flush_interval_s, stop))
    drainer = asyncio.create_task(drain_forever(app[POOL], app[REDIS], stop))
    cleaner = asyncio.create_task(rollups.keep_clean(app[POOL], stop))
    yield
    stop.set()
    await flusher
    await drainer
    await cleaner
    await app[LIMITER].aclose()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    """Every admin instance sends due deliveries and scans for expiring keys."""
    settings = app[SETTINGS]
    box_key = parse_key(settings.encryption_key) if settings.encryption_key else None
    app[SENDER] = Sender(app[POOL], settings.database_url, settings.webhooks, box_key,
                         user_agent=f"Keystile-Webhooks/{package_version()}")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(app[SENDER].run(stop)),
             asyncio.create_task(expiry.run(app[POOL], settings.webhooks, stop))]
    yield
    stop.set()
    await asyncio.gather(*tasks)


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "-"
    ADMIN_REQUESTS.labels(method=request.method, route=route,
                          status=str(response.status)).inc()
    return response


def create_app(settings: Settings) -> web.Application:
    logfilter.install()
    app = web.Application(middlewares=[count_requests, error_middleware],
                          client_max_size=settings.admin.request_body_limit)
    app[SETTINGS] = settings
    app[OPENAPI] = orjson.dumps(build(ROUTES, package_version()))
    app.cleanup_ctx.extend([_postgres, _redis, _limits, _webhooks])
    app.on_response_prepare.append(add_standard_headers)
    add_routes(app)
    console.mount(app)
    dialects.mount(app, settings)
    return app
