"""limits_mode = "fast": few Redis round trips, a written-down bound on over-admission, and
nothing admitted is lost — what a client and an operator can observe."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings, Settings
from gateway.state import LISTENING
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import (
    ProductionServer,
    Upstream,
    eventually,
    redis_round_trips,
    routes_for,
)

SHARE = 0.01  # the default fast_unsynced_share
INTERVAL_S = 0.2


def _fast(stores: Stores, upstream: Upstream, interval_s: float = INTERVAL_S) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    gateway=GatewaySettings(limits_mode="fast", fast_sync_interval_s=interval_s,
                                            fast_unsynced_share=SHARE),
                    routes=routes_for(upstream.url))


@pytest.fixture
def gateway_settings(stores: Stores, upstream: Upstream) -> Settings:
    return _fast(stores, upstream)


async def _quota_used(admin: Admin, key_id: str) -> int:
    usage = await admin.call("GET", f"/v1/keys/{key_id}/usage", expect=200)
    return int(usage["quota"]["used"])


async def test_a_burst_is_admitted_within_the_written_bound_and_nothing_is_lost(
        gateway: TestClient, admin: Admin, org: dict[str, Any], upstream: Upstream) -> None:
    limit = 1000
    key = await admin.key(org["id"], quota={"limit": limit, "period": "day"})
    headers = {"X-API-Key": key["key"]}

    async def one() -> int:
        return (await gateway.get("/maybe/x", headers=headers)).status

    statuses = Counter(await asyncio.gather(*(one() for _ in range(1200))))
    admitted = statuses[200]
    bound = limit + 2 * 1 * int(limit * SHARE)  # limit + 2 × workers × allowance
    assert limit <= admitted <= bound, statuses
    assert statuses[429] == 1200 - admitted
    assert len(upstream.seen) == admitted

    async def synced() -> bool:  # every admitted request reaches Redis at a sync
        return await _quota_used(admin, key["id"]) == admitted

    await eventually(synced)


async def test_most_requests_take_no_redis_round_trip(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    keys = [await admin.key(org["id"], quota={"limit": 100_000, "period": "day"},
                            rate_limits=[{"limit": 10_000, "window_s": 1},
                                         {"limit": 100_000, "window_s": 60},
                                         {"limit": 1_000_000, "window_s": 3600}])
            for _ in range(10)]
    for key in keys:  # first touch: cached in the worker, counters seeded at the next sync
        assert (await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})).status == 200

    async def seeded() -> bool:
        return all([await _quota_used(admin, k["id"]) == 1 for k in keys])

    await eventually(seeded)
    before = await redis_round_trips(gateway)
    sent = 0
    for _ in range(4):
        results = await asyncio.gather(*(gateway.get("/maybe/x", headers={
            "X-API-Key": keys[i % len(keys)]["key"]}) for i in range(100)))
        assert [r.status for r in results] == [200] * 100
        sent += 100
    trips = await redis_round_trips(gateway) - before
    assert trips <= 0.05 * sent, f"{trips} round trips for {sent} requests"
    # ...and the headers still tell the client where it stands (as of the last sync).
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": keys[0]["key"]})
    assert resp.headers["RateLimit-Limit"] == "10000"
    assert int(resp.headers["RateLimit-Remaining"]) < 10_000


async def test_an_exhausted_key_is_refused_here_until_an_admin_lifts_it(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    # A limit below 1 / fast_unsynced_share is always checked exactly: 3 pass, then 429.
    key = await admin.key(org["id"], quota={"limit": 3, "period": "day"})
    headers = {"X-API-Key": key["key"]}
    assert [(await gateway.get("/maybe/x", headers=headers)).status for _ in range(4)] == [
        200, 200, 200, 429]
    before = await redis_round_trips(gateway)
    refusals = [await gateway.get("/maybe/x", headers=headers) for _ in range(20)]
    assert {r.status for r in refusals} == {429}
    body = await refusals[0].json()
    assert body["error"]["code"] == "usage_exceeded"
    assert 0 < int(refusals[0].headers["Retry-After"]) <= 86400
    # Refused by the worker itself (the listener may PING a quiet channel once meanwhile).
    assert await redis_round_trips(gateway) - before <= 1
    await admin.call("PATCH", f"/v1/keys/{key['id']}",
                     json={"quota": {"limit": 10, "period": "day"}}, expect=200)

    async def lifted() -> bool:
        return (await gateway.get("/maybe/x", headers=headers)).status == 200

    await eventually(lifted)


async def test_what_was_admitted_is_synced_when_the_gateway_stops(
        aiohttp_client: Callable[..., Awaitable[TestClient]], stores: Stores,
        upstream: Upstream, admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], quota={"limit": 100_000, "period": "day"})
    app = create_app(_fast(stores, upstream, interval_s=5.0))  # no sync before the stop
    server = ProductionServer(app)
    await server.start_server(access_log=logging.getLogger("keystile.access"))
    client = await aiohttp_client(server)
    await asyncio.wait_for(app[LISTENING].wait(), 10)
    for _ in range(7):
        assert (await client.get("/maybe/x", headers={"X-API-Key": key["key"]})).status == 200
    await client.close()  # runs the app's cleanup: the last sync
    assert await _quota_used(admin, key["id"]) == 7


async def test_a_refused_costly_request_does_not_refuse_a_cheaper_one(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    """Refusals learnt from Redis remember how much was left: a request that fits asks
    Redis again instead of being refused here (as exact mode would admit it)."""
    key = await admin.key(org["id"], quota={"limit": 5, "period": "day"})
    headers = {"X-API-Key": key["key"]}
    assert [(await gateway.get("/maybe/x", headers=headers)).status for _ in range(4)] == [
        200] * 4
    assert (await gateway.get("/cost2/x", headers=headers)).status == 429  # 2 > 1 left
    assert (await gateway.get("/cost2/x", headers=headers)).status == 429  # refused here
    assert (await gateway.get("/maybe/x", headers=headers)).status == 200  # 1 fits
    assert (await gateway.get("/maybe/x", headers=headers)).status == 429  # now none left
    assert await _quota_used(admin, key["id"]) == 5


async def _fast_gateway(aiohttp_client: Callable[..., Awaitable[TestClient]], stores: Stores,
                        upstream: Upstream, share: float) -> TestClient:
    """A fast-mode gateway whose workers may admit ``share`` of a limit per sync on their
    own, syncing every 2 s: a short burst is judged before the first sync."""
    settings = Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                        gateway=GatewaySettings(limits_mode="fast", fast_sync_interval_s=2.0,
                                                fast_unsynced_share=share),
                        routes=routes_for(upstream.url))
    app = create_app(settings)
    server = ProductionServer(app)
    await server.start_server()
    client = await aiohttp_client(server)
    await asyncio.wait_for(app[LISTENING].wait(), 10)
    return client


async def _over_admitted(client: TestClient) -> float:
    """``keystile_fast_over_admitted_total`` as /metrics reports it (the registry is the
    process's: tests compare before and after)."""
    text = await (await client.get("/metrics")).text()
    return next(float(line.split()[1]) for line in text.splitlines()
                if line.startswith("keystile_fast_over_admitted_total "))


async def test_units_admitted_beyond_a_limit_are_counted_when_the_sync_reaches_redis(
        aiohttp_client: Callable[..., Awaitable[TestClient]], stores: Stores,
        upstream: Upstream, admin: Admin, org: dict[str, Any]) -> None:
    """A worker admits 5 of a 20-unit lifetime limit on its own (share 0.25), then the exact
    path lets Redis admit its full 20 (it has not heard of those 5 yet): the sync puts the
    count 5 over, and the counter says exactly how far."""
    gateway = await _fast_gateway(aiohttp_client, stores, upstream, share=0.25)
    limit = 20
    key = await admin.key(org["id"], usage_limit=limit)
    before = await _over_admitted(gateway)
    found = [(await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})).status
             for _ in range(30)]
    admitted = found.count(200)
    assert limit < admitted <= limit + 2 * 1 * int(limit * 0.25), found
    assert len(upstream.seen) == admitted

    async def counted() -> bool:
        return await _over_admitted(gateway) - before == admitted - limit

    await eventually(counted)
    usage = await admin.call("GET", f"/v1/keys/{key['id']}/usage", expect=200)
    assert usage["usage_count"] == admitted  # what was over is spent, not forgotten


@pytest.mark.parametrize("route,limit", [("/maybe/x", 1000), ("/shadow/x", 20)])
async def test_nothing_is_counted_over_within_limits_nor_for_a_shadow_route(
        aiohttp_client: Callable[..., Awaitable[TestClient]], stores: Stores,
        upstream: Upstream, admin: Admin, org: dict[str, Any], route: str, limit: int) -> None:
    """30 requests within a 1000-unit limit are never over; a shadow route's over-limit
    passes are shadow mode's (``keystile_shadow_limit_exceeded_total``), not fast mode's."""
    gateway = await _fast_gateway(aiohttp_client, stores, upstream, share=0.25)
    key = await admin.key(org["id"], usage_limit=limit)
    before = await _over_admitted(gateway)
    found = [(await gateway.get(route, headers={"X-API-Key": key["key"]})).status
             for _ in range(30)]
    assert found == [200] * 30

    async def synced() -> bool:
        usage = await admin.call("GET", f"/v1/keys/{key['id']}/usage", expect=200)
        return bool(usage["usage_count"] == 30)

    await eventually(synced)
    assert await _over_admitted(gateway) - before == 0
