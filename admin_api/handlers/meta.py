"""Health, readiness and the OpenAPI document: the only routes without credentials."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from aiohttp import web

from admin_api.auth import Principal
from admin_api.models import Health
from admin_api.state import POOL, REDIS
from admin_api.views import respond
from gateway.metrics import handler as metrics_handler
from gateway.readiness import probe

OPENAPI = web.AppKey("openapi", bytes)


def package_version() -> str:
    try:
        return version("keystile")
    except PackageNotFoundError:
        return "0.0.0"


async def healthz(request: web.Request) -> web.Response:
    return respond(Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    checks = {
        "postgres": await probe(request.app[POOL].fetchval("SELECT 1")),
        "redis": await probe(request.app[REDIS].ping()),
    }
    ready = all(v == "ok" for v in checks.values())
    return respond(Health(status="ok" if ready else "unavailable", checks=checks),
                   200 if ready else 503)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def metrics(request: web.Request, principal: Principal) -> web.Response:
    return await metrics_handler(request)
