"""Failure policies, tested by stopping and restarting the real embedded Redis and
PostgreSQL in the middle of a test (DESIGN §5): keys keep validating, rate limits fall back
to per-worker windows, quotas fail closed, an unknown key never passes, and everything
recovers by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway import keyformat
from gateway.metrics import FAIL_OPEN
from gateway.state import LISTENING
from tests.admin_api.conftest import Admin
from tests.conftest import Stores


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "did not recover in time"
        await asyncio.sleep(0.05)


async def test_redis_down_then_back(gateway: TestClient, admin: Admin, org: dict[str, Any],
                                    stores: Stores) -> None:
    if stores.redis is None:
        pytest.skip("needs the embedded Redis (it is stopped and restarted)")
    cached = await admin.key(org["id"])
    fresh = await admin.key(org["id"])
    limited = await admin.key(org["id"], rate_limits=[{"limit": 2, "window_s": 60}])
    quota = await admin.key(org["id"], quota={"limit": 100, "period": "day"})
    assert (await gateway.get("/maybe/x", headers={"X-API-Key": cached["key"]})).status == 200

    async def status(key: str) -> int:
        return (await gateway.get("/maybe/x", headers={"X-API-Key": key})).status

    stores.redis.stop()
    try:
        fail_open = FAIL_OPEN.labels(kind="rate_limit")._value.get()
        assert await status(cached["key"]) == 200  # worker cache, or PostgreSQL
        assert await status(fresh["key"]) == 200  # never seen: PostgreSQL
        assert await status(keyformat.generate("ks_live")) == 401  # unknown never passes
        assert [await status(limited["key"]) for _ in range(3)] == [200, 200, 429]
        assert FAIL_OPEN.labels(kind="rate_limit")._value.get() == fail_open + 3
        resp = await gateway.get("/maybe/x", headers={"X-API-Key": quota["key"]})
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "store_unavailable"
        assert (await gateway.get("/readyz")).status == 503
        # A change made now is committed and kept for delivery, not lost.
        await admin.call("POST", f"/v1/keys/{cached['id']}/revoke", expect=200)
        assert await admin.db.fetchval("SELECT count(*) FROM invalidation_outbox") >= 1
    finally:
        stores.redis.start()

    async def delivered() -> bool:
        return bool(await admin.db.fetchval("SELECT count(*) FROM invalidation_outbox") == 0)

    await _until(delivered)
    assert await status(cached["key"]) == 401

    # Back: full function without a restart, counters re-seeded from PostgreSQL.
    await asyncio.wait_for(gateway.app[LISTENING].wait(), 15)
    assert (await gateway.get("/readyz")).status == 200
    assert await status(quota["key"]) == 200
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": limited["key"]})
    assert resp.status == 200 and resp.headers["RateLimit-Remaining"] == "1"


async def test_postgres_down_then_back(gateway: TestClient, admin: Admin, org: dict[str, Any],
                                       stores: Stores) -> None:
    if stores.postgres is None:
        pytest.skip("needs the embedded PostgreSQL (it is stopped and restarted)")
    key = await admin.key(org["id"])
    assert (await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})).status == 200
    scoped = await admin.key(org["id"], scopes=["svc:read"])
    with_provider = {"X-API-Key": scoped["key"], "X-Provider": "acme"}
    assert (await gateway.get("/svc/x", headers=with_provider)).status == 200
    stores.postgres.stop()
    try:
        # Cached keys keep working (the worker cache, then the record shared in Redis).
        for _ in range(3):
            resp = await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})
            assert resp.status == 200
        # ...also with a provider header: its last known answer stands in for PostgreSQL.
        assert (await gateway.get("/svc/x", headers=with_provider)).status == 200
        unknown = await gateway.get("/maybe/x",
                                    headers={"X-API-Key": keyformat.generate("ks_live")})
        assert unknown.status == 503  # cannot be checked: refused, never passed
        body = await admin.call("GET", "/v1/keys", expect=503)
        assert body["error"]["code"] == "store_unavailable"
        assert "PostgreSQL is unavailable" in body["error"]["message"]
    finally:
        stores.postgres.start()

    async def admin_back() -> bool:
        resp = await admin.client.get("/v1/keys", headers={
            "Authorization": "Bearer test-operator-token-0123456789"})
        return resp.status == 200

    await _until(admin_back)

    async def gateway_back() -> bool:
        resp = await gateway.get("/maybe/x", headers={"X-API-Key": keyformat.generate("ks")})
        return resp.status == 401

    await _until(gateway_back)

    async def usage_flushed() -> bool:
        count = await admin.db.fetchval("SELECT usage_count FROM keys WHERE id = $1", key["id"])
        return bool(count == 4)

    admin.db = await _reconnect(stores)
    try:
        await _until(usage_flushed)  # the usage spent during the outage was kept and written
    finally:
        await admin.db.close()


async def _reconnect(stores: Stores) -> Any:
    from gateway.database import connect

    return await connect(stores.database_url)
