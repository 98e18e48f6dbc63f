"""A stalled store costs a request at most the store deadline, ``[stores] timeout_s``: it is
answered 503 within it — never a hang, and never judged per worker as if Redis were down. And
when Redis resumes the spend scripts of those requests, already late, they spend nothing: the
key is charged exactly for the requests that were served."""


from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio
from aiohttp import ClientTimeout
from aiohttp.test_utils import TestClient

from gateway.settings import GatewaySettings, Settings, StoreSettings
from gateway.state import DEPS
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import MiB, Upstream, eventually, routes_for, statuses

TIMEOUT_S = 0.5
PAUSE_MS = 5000  # longer than every request of the CLIENT PAUSE test takes together
CLIENT_TIMEOUT = ClientTimeout(total=30)  # much larger than the deadline


@pytest.fixture
def gateway_settings(stores: Stores, upstream: Upstream) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    stores=StoreSettings(timeout_s=TIMEOUT_S),
                    gateway=GatewaySettings(max_body_bytes=MiB),
                    routes=routes_for(upstream.url))


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
    seen = await statuses(gateway, key["key"], 3)  # cached; Redis's clock learnt
    try:
        sleeper = await _stall(control, stores.redis_url, 3 * TIMEOUT_S)
        during = await statuses(gateway, key["key"], 10)
        assert during == [503] * 10
        await sleeper  # Redis resumed and ran what had waited for it
        seen += during + await statuses(gateway, key["key"], 3)
    finally:
        await control.aclose()
    served = seen.count(200)
    assert served == 6
    usage = await admin.call("GET", f"/v1/keys/{key['id']}/usage", expect=200)
    assert usage["rate_limits"][0]["remaining"] == 1000 - served

    async def headers_agree() -> bool:
        resp = await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})
        return resp.headers.get("RateLimit-Remaining") == str(1000 - served - 1)
    await eventually(headers_agree, timeout=1.0)


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
            assert elapsed < TIMEOUT_S + 2.0, results
        assert len(upstream.seen) == seen  # nothing refused reached the upstream
        # Redis answers again once the pause is over (this waits for it), and so does the
        # gateway, without a restart.
        assert await pauser.ping()
    finally:
        await pauser.aclose()
    assert (await _timed(gateway, rated["key"]))[:2] == (200, None)


async def test_a_fresh_workers_first_spends_are_not_charged_late_either(
        gateway: TestClient, admin: Admin, org: dict[str, Any], stores: Stores) -> None:
    """The worker reads Redis's clock at start-up, so even before its first spend has
    answered, a spend that Redis runs after the request's deadline spends nothing."""
    limiter = gateway.server.app[DEPS].limiter

    async def clock_known() -> bool:
        return limiter.clock.offset_ms() is not None
    await eventually(clock_known, timeout=5.0)
    key = await admin.key(org["id"], rate_limits=[{"limit": 1000, "window_s": 60}])
    control = redis.asyncio.Redis.from_url(stores.redis_url)
    try:
        sleeper = await _stall(control, stores.redis_url, 3 * TIMEOUT_S)
        assert await statuses(gateway, key["key"], 5) == [503] * 5
        await sleeper
    finally:
        await control.aclose()
    after = await statuses(gateway, key["key"], 1)
    assert after == [200]
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})
    assert resp.headers["RateLimit-Remaining"] == str(1000 - 2)  # only the two served


async def test_a_refund_long_after_the_store_deadline_still_gives_the_units_back(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    """The upstream fails (502) after 1.5 s, three times the store deadline: the route gives
    the units back all the same (a refund is never too late)."""
    key = await admin.key(org["id"], usage_limit=100,
                          rate_limits=[{"limit": 10, "window_s": 60}])
    headers = {"X-API-Key": key["key"]}
    assert (await gateway.get("/maybe/x", headers=headers)).status == 200
    started = time.monotonic()
    resp = await gateway.get("/refund/slow?status=502", headers=headers)
    assert resp.status == 502 and time.monotonic() - started > 3 * TIMEOUT_S
    usage = await admin.call("GET", f"/v1/keys/{key['id']}/usage", expect=200)
    assert usage["rate_limits"][0]["remaining"] == 9  # only the first request is charged
    assert usage["usage_remaining"] == 99
