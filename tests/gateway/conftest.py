"""A real gateway app in front of a recording upstream, keys made through the admin API, and
a raw HTTP client for request targets that ordinary clients would tidy up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.accesslog import AccessLogger
from gateway.app import create_app
from gateway.settings import GatewaySettings, RouteSettings, Settings
from gateway.state import LISTENING
from tests.admin_api.conftest import Admin, admin, org, root, settings  # noqa: F401
from tests.conftest import Stores

MiB = 1 << 20


@dataclass
class Upstream:
    """Records what reached it; ``/big/{n}`` streams n bytes, ``/sink`` counts the body,
    ``/gate`` answers once the test opens ``gate``."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    server: TestServer | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def record(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/svc/big/"):
            size = int(request.path.rsplit("/", 1)[1])
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = size
            await response.prepare(request)
            chunk = b"x" * MiB
            sent = 0
            while sent < size:
                part = chunk[: min(MiB, size - sent)]
                await response.write(part)
                sent += len(part)
            await response.write_eof()
            return response
        if request.path.startswith("/svc/sink"):
            total = 0
            async for part in request.content.iter_chunked(MiB):
                total += len(part)
            self.seen.append({"path": request.raw_path, "received": total})
            return web.json_response({"received": total})
        if request.path.startswith("/svc/gate"):
            self.arrived.set()
            await self.gate.wait()
        if request.path.startswith(("/svc/slow", "/refund/slow")):
            await asyncio.sleep(1.5)
        body = await request.read()
        self.seen.append({"method": request.method, "path": request.raw_path,
                          "headers": dict(request.headers), "body": body,
                          "at": time.monotonic()})
        status = int(request.query.get("status", "200"))
        return web.Response(status=status, body=b"upstream says hi",
                            headers={"X-Upstream": "1", "Connection": "X-Private",
                                     "X-Private": "secret", "Keep-Alive": "timeout=5"})


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Upstream:
    up = Upstream()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", up.record)
    up.server = await aiohttp_server(app)
    return up


def routes_for(upstream_url: str) -> list[RouteSettings]:
    return [
        RouteSettings(prefix="/svc", upstream=upstream_url, provider_header="X-Provider",
                      scopes={"GET": ["svc:read"], "POST": ["svc:write"], "PUT": ["svc:write"]},
                      methods=["GET", "HEAD", "POST", "PUT"], timeout_s=1.0),
        RouteSettings(prefix="/open", upstream=upstream_url + "/svc", strip_prefix=True,
                      auth="none"),
        RouteSettings(prefix="/maybe", upstream=upstream_url, auth="optional"),
        RouteSettings(prefix="/bearer", upstream=upstream_url, credentials="bearer"),
        RouteSettings(prefix="/down", upstream="http://127.0.0.1:9", timeout_s=1.0),
        RouteSettings(prefix="/partial", upstream=upstream_url, scopes={"GET": ["svc:read"]}),
        RouteSettings(prefix="/cost2", upstream=upstream_url, cost=2),
        RouteSettings(prefix="/refund", upstream=upstream_url, refund_on_upstream_error=True),
        RouteSettings(prefix="/shadow", upstream=upstream_url, enforce=False),
    ]


@pytest.fixture
def gateway_settings(stores: Stores, upstream: Upstream) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    gateway=GatewaySettings(max_body_bytes=300 * MiB, max_header_count=50,
                                            max_header_bytes=8192),
                    routes=routes_for(upstream.url))


async def redis_round_trips(client: TestClient) -> float:
    """``keystile_redis_round_trips_total`` as the gateway's /metrics reports it."""
    text = await (await client.get("/metrics")).text()
    return next(float(line.split()[1]) for line in text.splitlines()
                if line.startswith("keystile_redis_round_trips_total "))


async def limit_state_bytes(redis_url: str, org_id: str) -> int:
    """What an organisation's limit states take in Redis (sum of ``MEMORY USAGE``)."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        names = [k async for k in client.scan_iter(match=f"ks:{{{org_id}}}:*", count=1000)]
        return sum([int(await client.memory_usage(k) or 0) for k in names])
    finally:
        await client.aclose()


async def statuses(gateway: TestClient, key: str, n: int) -> list[int]:
    """The statuses of ``n`` concurrent keyed requests to /maybe/x."""
    async def one() -> int:
        resp = await gateway.get("/maybe/x", headers={"X-API-Key": key})
        await resp.read()
        return resp.status
    return list(await asyncio.gather(*(one() for _ in range(n))))


async def one_by_one(gateway: TestClient, key: str, n: int, method: str = "GET",
                     path: str = "/svc/x") -> list[int]:
    """The statuses of ``n`` keyed requests (provider acme) sent one after another."""
    statuses = []
    for _ in range(n):
        resp = await gateway.request(method, path,
                                     headers={"X-API-Key": key, "X-Provider": "acme"})
        await resp.read()
        statuses.append(resp.status)
    return statuses


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Waits for state a user can observe (a flush, a sync), with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


class ProductionServer(TestServer):
    """aiohttp's TestServer cancels a handler whose client left; production servers don't,
    and the gateway must behave as it does in production."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
async def gateway(aiohttp_client: Callable[..., Awaitable[TestClient]],
                  gateway_settings: Settings, admin: Admin) -> TestClient:  # noqa: F811
    app = create_app(gateway_settings)
    # The production access logger, so log tests see what operators would.
    server = ProductionServer(app)
    await server.start_server(access_log_class=AccessLogger,
                              access_log=logging.getLogger("keystile.access"))
    client = await aiohttp_client(server)
    await asyncio.wait_for(app[LISTENING].wait(), 10)
    return client


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(port: int, method: str, target: str,
                      headers: dict[str, str] | None = None, body: bytes = b"") -> RawResponse:
    """Sends the request target byte for byte, as a hostile client might."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").strip().split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    # Read exactly the response, without waiting for the server to close the connection.
    payload = await reader.readexactly(int(parsed.get("content-length", "0")))
    writer.close()
    return RawResponse(int(status_line.split()[1]), parsed, payload)
