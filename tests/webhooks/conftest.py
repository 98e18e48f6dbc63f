"""A real webhook receiver on a loopback port, and admin instances whose senders and expiry
scheduler run on short intervals so tests see deliveries and retries quickly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from admin_api.accesslog import AccessLogger
from admin_api.app import create_app
from admin_api.webhooks import expiry
from gateway.settings import AdminSettings, GatewaySettings, Settings, WebhookSettings
from keystile.embedded import free_port
from tests.admin_api.conftest import OPERATOR_TOKEN, Admin, admin, org, root  # noqa: F401
from tests.conftest import Stores
from tests.gateway.conftest import Upstream, gateway, routes_for, upstream  # noqa: F401

FAST = WebhookSettings(timeout_s=2, retry_base_s=0.05, retry_max_s=0.2, poll_interval_s=0.02,
                       scan_interval_s=0.05, allow_private_addresses=True)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """Answers ``status`` to every POST and keeps what it got. While ``gate`` is clear it
    holds each request (a slow receiver); ``start``/``stop`` bring it up and down on the
    same port (a receiver that was away)."""

    port: int = field(default_factory=free_port)
    status: int = 200
    got: list[Received] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    held: int = 0  # requests it is holding now
    peak: int = 0  # the most it held at once

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrived.set()
        self.held += 1
        self.peak = max(self.peak, self.held)
        try:
            await self.gate.wait()
        finally:
            self.held -= 1
        if 200 <= self.status < 300:
            self.got.append(Received(dict(request.headers), body))
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self.runner = web.AppRunner(app, handler_cancellation=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            self.gate.set()
            await self.runner.cleanup()
            self.runner = None

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        found = [r.event for r in self.got]
        return [e for e in found if type_ is None or e["type"] == type_]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def admin_settings(stores: Stores, **webhooks: Any) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    admin=AdminSettings(token=OPERATOR_TOKEN),
                    webhooks=FAST.model_copy(update=webhooks))


@pytest.fixture
def settings(stores: Stores, request: pytest.FixtureRequest) -> Settings:
    """The ``admin`` fixture's settings: webhooks on short intervals, changed by a test's
    ``@pytest.mark.webhooks(...)``."""
    marker = request.node.get_closest_marker("webhooks")
    return admin_settings(stores, **(marker.kwargs if marker else {}))


@pytest.fixture
def gateway_settings(stores: Stores, upstream: Upstream) -> Settings:  # noqa: F811
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    gateway=GatewaySettings(usage_flush_interval_s=0.05),
                    routes=routes_for(upstream.url))


@pytest.fixture
def another_admin(aiohttp_client: Callable[..., Awaitable[TestClient]]
                  ) -> Callable[[Settings], Any]:
    """Another admin instance (its own sender and scheduler) on the same stores."""

    @asynccontextmanager
    async def start(settings: Settings) -> AsyncIterator[TestClient]:
        server = TestServer(create_app(settings))
        await server.start_server(access_log_class=AccessLogger,
                                  access_log=logging.getLogger("keystile.access"))
        client = await aiohttp_client(server)
        try:
            yield client
        finally:
            await client.close()

    return start


async def subscribe(api: Admin, org_id: str, url: str, **fields: Any) -> dict[str, Any]:
    endpoint: dict[str, Any] = await api.call(
        "POST", f"/v1/orgs/{org_id}/webhooks", json={"url": url, **fields}, expect=201)
    return endpoint



async def nothing_left_to_announce(db: Any) -> None:
    """A scan of this test's own finds no expiry left to announce (it waits while another
    instance's scan holds the lock)."""
    for _ in range(200):
        found = await expiry.scan(db)
        if found is not None:
            assert found == 0, f"{found} expiry event(s) were still due"
            return
        await asyncio.sleep(0.01)
    raise AssertionError("another instance kept scanning")
