"""Rate limits, quotas and lifetime usage through the real gateway and real Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis.asyncio
from aiohttp.test_utils import TestClient

from gateway.metrics import SHADOW_EXCEEDED
from tests.admin_api.conftest import Admin, as_key
from tests.gateway.conftest import Upstream, eventually, redis_round_trips


async def _burst(gateway: TestClient, path: str, key: str, n: int) -> list[tuple[int, Any]]:
    async def one() -> tuple[int, Any]:
        resp = await gateway.get(path, headers={"X-API-Key": key})
        body = await resp.json() if resp.status == 429 else None
        return resp.status, (body, dict(resp.headers))
    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_sliding_window_admits_exactly_the_limit(gateway: TestClient, upstream: Upstream,
                                                       admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], rate_limits=[{"limit": 10, "window_s": 60}])
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})
    assert resp.status == 200
    assert resp.headers["RateLimit-Limit"] == "10" and resp.headers["RateLimit-Remaining"] == "9"
    assert resp.headers["RateLimit-Policy"] == "10;w=60"
    results = await _burst(gateway, "/maybe/x", key["key"], 200)
    statuses = Counter(status for status, _ in results)
    assert statuses == Counter({200: 9, 429: 191})
    body, headers = next(extra for status, extra in results if status == 429)
    assert body["error"]["code"] == "rate_limited" and "10 per 60 s" in body["error"]["message"]
    # At most one bucket (1/60 of the window) later than a sliding log would say.
    assert 0 < int(headers["Retry-After"]) <= 61 and headers["RateLimit-Remaining"] == "0"
    assert len(upstream.seen) == 10


async def test_quota_with_cost_two(gateway: TestClient, admin: Admin, org: dict[str, Any],
                                   upstream: Upstream) -> None:
    key = await admin.key(org["id"], quota={"limit": 5, "period": "day"})
    statuses = [(await gateway.get("/cost2/x", headers={"X-API-Key": key["key"]})).status
                for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    resp = await gateway.get("/cost2/x", headers={"X-API-Key": key["key"]})
    body = await resp.json()
    assert body["error"]["code"] == "usage_exceeded" and "quota of 5" in body["error"]["message"]
    now = datetime.now(UTC)
    until_midnight = 86400 - (now.hour * 3600 + now.minute * 60 + now.second)
    assert 0 < int(resp.headers["Retry-After"]) <= until_midnight + 1
    # One unit is left, but this route costs two: a cheaper route still gets through.
    assert (await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})).status == 200


async def test_a_rate_limited_request_spends_no_quota(gateway: TestClient, admin: Admin,
                                                      org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], rate_limits=[{"limit": 2, "window_s": 60}],
                          quota={"limit": 100, "period": "month"}, usage_limit=50)
    statuses = [(await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})).status
                for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    usage = await (await gateway.get("/_keystile/usage",
                                     headers={"X-API-Key": key["key"]})).json()
    assert usage["quota"]["used"] == 2 and usage["usage_count"] == 2
    assert usage["usage_remaining"] == 48
    assert usage["rate_limits"] == [{"scope": "key", "limit": 2, "window_s": 60, "remaining": 0,
                                     "resets_at": usage["rate_limits"][0]["resets_at"]}]
    again = await (await gateway.get("/_keystile/usage",
                                     headers={"X-API-Key": key["key"]})).json()
    assert again["usage_count"] == 2  # looking spends nothing


async def test_lifetime_limit_has_no_retry_after_and_says_how_to_fix(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], usage_limit=3)
    statuses = []
    for _ in range(3):
        resp = await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})
        statuses.append(resp.status)
    assert statuses == [200, 200, 200]
    assert resp.headers["X-Usage-Limit"] == "3" and resp.headers["X-Usage-Remaining"] == "0"
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})
    body = await resp.json()
    assert resp.status == 429 and body["error"]["code"] == "usage_exceeded"
    assert "Retry-After" not in resp.headers
    assert "usage_limit" in body["error"]["message"]
    # The operator resets the lifetime count: the gateway honours it at once.
    await admin.call("POST", f"/v1/keys/{key['id']}/usage", json={"op": "set", "value": 0},
                     expect=200)
    assert (await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})).status == 200


async def test_refund_on_upstream_error(gateway: TestClient, admin: Admin, org: dict[str, Any]
                                        ) -> None:
    key = await admin.key(org["id"], usage_limit=2)
    for _ in range(3):
        resp = await gateway.get("/refund/x?status=503", headers={"X-API-Key": key["key"]})
        assert resp.status == 503  # the upstream's own answer
    for _ in range(2):
        assert (await gateway.get("/refund/x", headers={"X-API-Key": key["key"]})).status == 200
    assert (await gateway.get("/refund/x", headers={"X-API-Key": key["key"]})).status == 429
    # Without refund_on_upstream_error a failed upstream still counts.
    other = await admin.key(org["id"], usage_limit=1)
    assert (await gateway.get("/maybe/x?status=503",
                              headers={"X-API-Key": other["key"]})).status == 503
    assert (await gateway.get("/maybe/x", headers={"X-API-Key": other["key"]})).status == 429


async def test_shadow_mode_passes_and_marks(gateway: TestClient, admin: Admin,
                                            org: dict[str, Any], upstream: Upstream) -> None:
    key = await admin.key(org["id"], rate_limits=[{"limit": 1, "window_s": 60}])
    before = SHADOW_EXCEEDED.labels(route="/shadow")._value.get()
    responses = [await gateway.get("/shadow/x", headers={"X-API-Key": key["key"]})
                 for _ in range(3)]
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.headers["RateLimit-Remaining"] for r in responses] == ["0", "0", "0"]
    assert SHADOW_EXCEEDED.labels(route="/shadow")._value.get() == before + 2
    assert len(upstream.seen) == 3


async def test_a_key_in_shadow_mode_passes_over_its_limits_until_enforced_again(
        gateway: TestClient, admin: Admin, org: dict[str, Any], root: dict[str, Any],
        upstream: Upstream) -> None:
    key = await admin.key(org["id"], rate_limits=[{"limit": 1, "window_s": 60}])
    before = SHADOW_EXCEEDED.labels(route="/maybe")._value.get()
    shadowed = await admin.call("PATCH", f"/v1/keys/{key['id']}",
                                json={"shadow_limits": True}, expect=200)
    assert shadowed["shadow_limits"] is True
    responses = [await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})
                 for _ in range(3)]
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.headers["RateLimit-Remaining"] for r in responses] == ["0", "0", "0"]
    assert SHADOW_EXCEEDED.labels(route="/maybe")._value.get() == before + 2
    assert len(upstream.seen) == 3
    await admin.call("PATCH", f"/v1/keys/{key['id']}", json={"shadow_limits": False},
                     expect=200)
    assert (await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})).status == 429
    # Only the operator turns it on: it lifts the organisation's shared limits too, which a
    # root key cannot raise; a root key may turn it off.
    for target in (root, key):
        refused = await admin.call("PATCH", f"/v1/keys/{target['id']}",
                                   json={"shadow_limits": True}, headers=as_key(root["key"]),
                                   expect=403)
        assert refused["error"]["code"] == "operator_required"
    await admin.call("PATCH", f"/v1/keys/{key['id']}", json={"shadow_limits": False},
                     headers=as_key(root["key"]), expect=200)


async def test_limits_shared_by_owner_and_organisation(gateway: TestClient, admin: Admin) -> None:
    org = await admin.org("shared", rate_limits=[{"limit": 5, "window_s": 60}])
    await admin.call("PUT", f"/v1/orgs/{org['id']}/owners/clinic/limits",
                     json={"rate_limits": [{"limit": 3, "window_s": 60}]}, expect=200)
    a = await admin.key(org["id"], owner_id="clinic")
    b = await admin.key(org["id"], owner_id="clinic")
    c = await admin.key(org["id"], owner_id="elsewhere")
    statuses = [(await gateway.get("/maybe/x", headers={"X-API-Key": k["key"]})).status
                for k in (a, b, a, b)]
    assert statuses == [200, 200, 200, 429]  # the owner's 3 are shared by a and b
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": b["key"]})
    assert "shared by the owner" in (await resp.json())["error"]["message"]
    statuses = [(await gateway.get("/maybe/x", headers={"X-API-Key": c["key"]})).status
                for _ in range(3)]
    assert statuses == [200, 200, 429]  # the organisation's 5: 3 used by clinic, 2 left


async def test_usage_reaches_postgres_and_survives_a_redis_flush(
        gateway: TestClient, admin: Admin, org: dict[str, Any], own_redis: str) -> None:
    key = await admin.key(org["id"], usage_limit=50, quota={"limit": 45, "period": "day"})
    for _ in range(20):
        assert (await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})).status == 200

    async def flushed() -> bool:
        row = await admin.db.fetchrow("SELECT usage_count, last_used_at FROM keys WHERE id = $1",
                                      key["id"])
        return bool(row["usage_count"] == 20 and row["last_used_at"] is not None)

    await eventually(flushed)
    assert await admin.db.fetchval("SELECT count FROM key_usage_daily WHERE key_id = $1",
                                   key["id"]) == 20
    client = redis.asyncio.Redis.from_url(own_redis)
    await client.flushall()
    await client.aclose()
    statuses = Counter([(await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})).status
                        for _ in range(40)])
    # Counters re-seeded from PostgreSQL: the quota of 45 leaves exactly 25.
    assert statuses == Counter({200: 25, 429: 15})
    usage = await admin.call("GET", f"/v1/keys/{key['id']}/usage", expect=200)
    assert usage["quota"]["used"] == 45 and usage["usage_count"] == 45


async def test_exact_mode_costs_one_redis_round_trip_per_request(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    """Three windows and a quota are judged and spent in one round trip (once the key is
    cached in the worker)."""
    key = await admin.key(org["id"], quota={"limit": 1000, "period": "day"},
                          rate_limits=[{"limit": 100, "window_s": 1},
                                       {"limit": 1000, "window_s": 60},
                                       {"limit": 5000, "window_s": 3600}])
    headers = {"X-API-Key": key["key"]}
    assert (await gateway.get("/maybe/x", headers=headers)).status == 200  # cached, seeded
    before = await redis_round_trips(gateway)
    for _ in range(5):
        assert (await gateway.get("/maybe/x", headers=headers)).status == 200
    spent = await redis_round_trips(gateway) - before
    # 5 spends; the invalidation listener may PING a quiet channel once meanwhile.
    assert 5 <= spent <= 6


async def test_concurrent_spends_share_round_trips_and_stay_exact(
        gateway: TestClient, upstream: Upstream, admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], rate_limits=[{"limit": 50, "window_s": 60}])
    headers = {"X-API-Key": key["key"]}
    assert (await gateway.get("/maybe/x", headers=headers)).status == 200
    before = await redis_round_trips(gateway)
    results = await _burst(gateway, "/maybe/x", key["key"], 200)
    assert Counter(status for status, _ in results) == Counter({200: 49, 429: 151})
    # Spends started together went in one pipeline: one round trip each would be ~200; here
    # about 10 carry them all. A quarter leaves room for a busy machine spreading arrivals.
    assert await redis_round_trips(gateway) - before <= 200 // 4
