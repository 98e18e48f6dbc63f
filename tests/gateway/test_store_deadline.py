"""A stalled store (Redis paused with ``CLIENT PAUSE``: connected, answering nothing) costs a
request at most the store deadline, ``[stores] timeout_s``: it is answered 503 within it —
never a hang, and never judged per worker as if Redis were down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio
from aiohttp import ClientTimeout
from aiohttp.test_utils import TestClient

from gateway.settings import GatewaySettings, Settings, StoreSettings
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import MiB, Upstream, routes_for

DEADLINE_S = 1.0
PAUSE_MS = 5000  # longer than every request below takes together
CLIENT_TIMEOUT = ClientTimeout(total=30)  # much larger than the deadline


@pytest.fixture
def gateway_settings(stores: Stores, upstream: Upstream) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    gateway=GatewaySettings(max_body_bytes=MiB),
                    stores=StoreSettings(timeout_s=DEADLINE_S),
                    routes=routes_for(upstream.url))


async def _timed(gateway: TestClient, raw: str) -> tuple[int, str | None, float]:
    started = time.monotonic()
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": raw}, timeout=CLIENT_TIMEOUT)
    body = await resp.json() if resp.status >= 400 else None
    return resp.status, body["error"]["code"] if body else None, time.monotonic() - started


async def test_a_stalled_redis_gives_503_within_the_store_deadline(
        gateway: TestClient, upstream: Upstream, admin: Admin, org: dict[str, Any],
        stores: Stores) -> None:
    # Rate limits only: were the deadline missing, Redis's own socket timeout would turn the
    # stall into "Redis is down" and the per-worker fallback would answer 200.
    rated = await admin.key(org["id"], rate_limits=[{"limit": 100, "window_s": 60}])
    quota = await admin.key(org["id"], quota={"limit": 100, "period": "month"})
    fresh = await admin.key(org["id"])  # never used: its lookup needs Redis first
    for key in (rated, quota):
        assert (await _timed(gateway, key["key"]))[0] == 200
    seen = len(upstream.seen)

    pauser = redis.asyncio.Redis.from_url(stores.redis_url)
    try:
        await pauser.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        paused_at = time.monotonic()
        results = await asyncio.gather(*(_timed(gateway, key["key"])
                                         for key in (rated, quota, fresh)))
        assert time.monotonic() - paused_at < PAUSE_MS / 1000, "Redis resumed too early"
        for status, code, elapsed in results:
            assert (status, code) == (503, "store_unavailable"), results
            # Loosely: about the deadline, far from the client's 30 s (a busy machine adds).
            assert elapsed < DEADLINE_S + 2.0, results
        assert len(upstream.seen) == seen  # nothing refused reached the upstream
        # Redis answers again once the pause is over (this waits for it), and so does the
        # gateway, without a restart.
        assert await pauser.ping()
    finally:
        await pauser.aclose()
    assert (await _timed(gateway, rated["key"]))[:2] == (200, None)
