"""A Redis stall longer than the store deadline: the requests waiting on it are answered 503,
and when Redis resumes their spend scripts, already late, spend nothing — the key is charged
exactly for the requests that were served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
from aiohttp.test_utils import TestClient

from gateway.settings import GatewaySettings, Settings, StoreSettings
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import MiB, Upstream, eventually, routes_for

TIMEOUT_S = 0.5


@pytest.fixture
def gateway_settings(stores: Stores, upstream: Upstream) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    stores=StoreSettings(timeout_s=TIMEOUT_S),
                    gateway=GatewaySettings(max_body_bytes=MiB),
                    routes=routes_for(upstream.url))


async def _statuses(gateway: TestClient, key: str, n: int) -> list[int]:
    async def one() -> int:
        resp = await gateway.get("/maybe/x", headers={"X-API-Key": key})
        await resp.read()
        return resp.status
    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _stall(control: redis.asyncio.Redis, url: str, seconds: float) -> asyncio.Task[Any]:
    """Redis sleeps ``seconds`` (DEBUG SLEEP); returns once it is seen not answering."""
    sleeper = asyncio.create_task(control.execute_command("DEBUG", "SLEEP", str(seconds)))
    probe = redis.asyncio.Redis.from_url(url)
    try:
        while True:
            try:
                await asyncio.wait_for(probe.ping(), 0.05)
            except TimeoutError:
                return sleeper
    finally:
        await probe.aclose()


async def test_requests_answered_503_in_a_stall_are_not_charged(
        gateway: TestClient, admin: Admin, org: dict[str, Any], stores: Stores) -> None:
    key = await admin.key(org["id"], rate_limits=[{"limit": 1000, "window_s": 60}])
    control = redis.asyncio.Redis.from_url(stores.redis_url)
    statuses = await _statuses(gateway, key["key"], 3)  # cached; Redis's clock learnt
    try:
        sleeper = await _stall(control, stores.redis_url, 3 * TIMEOUT_S)
        during = await _statuses(gateway, key["key"], 10)
        assert during == [503] * 10
        await sleeper  # Redis resumed and ran what had waited for it
        statuses += during + await _statuses(gateway, key["key"], 3)
    finally:
        await control.aclose()
    served = statuses.count(200)
    assert served == 6
    log = f"ks:{{{org['id']}}}:r:k:{key['id']}:60"
    reader = redis.asyncio.Redis.from_url(stores.redis_url)
    try:
        assert await reader.zcard(log) == served
        assert int(await reader.get(log + ":s")) == served

        async def headers_agree() -> bool:
            resp = await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})
            return resp.headers.get("RateLimit-Remaining") == str(1000 - served - 1)
        await eventually(headers_agree, timeout=1.0)
    finally:
        await reader.aclose()
