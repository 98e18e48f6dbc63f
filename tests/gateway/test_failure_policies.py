"""The non-default failure policies with Redis really stopped (the defaults are in
test_failures.py): ``rate_limits_without_redis = "closed"`` answers 503 instead of falling
back to per-worker windows, ``quotas_without_redis = "open"`` lets quota and lifetime keys
pass uncounted — and ``keystile_fail_open_total{kind=...}`` counts exactly what passed
unjudged."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway import keyformat
from gateway.settings import GatewaySettings, Settings
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import MiB, Upstream, eventually, routes_for
from tests.gateway.test_observability import _value


@pytest.fixture
def gateway_settings(stores: Stores, upstream: Upstream) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    gateway=GatewaySettings(max_body_bytes=MiB,
                                            rate_limits_without_redis="closed",
                                            quotas_without_redis="open"),
                    routes=routes_for(upstream.url))


async def _fail_open(gateway: TestClient) -> dict[str, float]:
    text = await (await gateway.get("/metrics")).text()
    return {kind: _value(text, "keystile_fail_open_total", kind=kind)
            for kind in ("rate_limit", "quota", "shadow")}


async def _call(gateway: TestClient, raw: str) -> tuple[int, dict[str, Any] | None]:
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": raw})
    body = await resp.json() if resp.status >= 400 else None
    return resp.status, body


async def test_closed_rate_limits_and_open_quotas_without_redis(
        gateway: TestClient, upstream: Upstream, admin: Admin, org: dict[str, Any],
        stores: Stores) -> None:
    if stores.redis is None:
        pytest.skip("needs the embedded Redis (it is stopped and restarted)")
    plain = await admin.key(org["id"])
    rated = await admin.key(org["id"], rate_limits=[{"limit": 100, "window_s": 60}])
    quota = await admin.key(org["id"], quota={"limit": 2, "period": "month"})
    lifetime = await admin.key(org["id"], usage_limit=2)
    both = await admin.key(org["id"], quota={"limit": 100, "period": "month"},
                           rate_limits=[{"limit": 100, "window_s": 60}])
    for key in (plain, rated, quota, lifetime, both):  # cached by the worker, seeded in Redis
        assert (await _call(gateway, key["key"]))[0] == 200

    stores.redis.stop()
    try:
        before = await _fail_open(gateway)
        seen = len(upstream.seen)
        assert (await _call(gateway, plain["key"]))[0] == 200  # no limits: nothing to judge
        assert (await _call(gateway, keyformat.generate("ks_live")))[0] == 401

        # closed: a rate-limited key is refused, never judged per worker.
        for _ in range(2):
            status, body = await _call(gateway, rated["key"])
            assert status == 503 and body is not None
            assert body["error"]["code"] == "store_unavailable"
            assert "rate limits cannot be checked" in body["error"]["message"]
        assert (await _fail_open(gateway))["rate_limit"] == before["rate_limit"]

        # open: quota and lifetime keys pass uncounted, past their limit of 2 (1 spent).
        for key in (quota, lifetime):
            assert [(await _call(gateway, key["key"]))[0] for _ in range(3)] == [200] * 3
        after = await _fail_open(gateway)
        assert after["quota"] == before["quota"] + 6
        assert after["rate_limit"] == before["rate_limit"] and after["shadow"] == before["shadow"]

        # A key with both: its quota may pass uncounted, its rate limits may not.
        status, body = await _call(gateway, both["key"])
        assert status == 503 and body is not None
        assert body["error"]["code"] == "store_unavailable"
        assert (await _fail_open(gateway))["rate_limit"] == before["rate_limit"]
        # What passed reached the upstream; what was refused did not.
        assert len(upstream.seen) == seen + 1 + 6
    finally:
        stores.redis.start()

    async def ready() -> bool:
        return (await gateway.get("/readyz")).status == 200

    await eventually(ready, timeout=15)
    # Back: everything is judged in Redis again, nothing counted as failing open.
    before = await _fail_open(gateway)
    assert (await _call(gateway, rated["key"]))[0] == 200
    assert (await _fail_open(gateway)) == before
