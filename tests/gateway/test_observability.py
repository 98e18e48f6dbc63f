"""Metrics and logs: what operators see, and what they must never see (a key)."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway import keyformat
from tests.admin_api.conftest import OPERATOR, Admin
from tests.gateway.conftest import Upstream, eventually


def _value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_requests_codes_cache_and_latency(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], scopes=["svc:read"])
    before = await (await gateway.get("/metrics")).text()
    for _ in range(3):
        assert (await gateway.get("/svc/x", headers={"X-API-Key": key["key"]})).status == 200
    assert (await gateway.get("/svc/x", headers={"X-API-Key": "bad"})).status == 401
    after = await (await gateway.get("/metrics")).text()

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("keystile_requests_total", route="/svc", status="200", code="") == 3
    assert grew("keystile_requests_total", route="/svc", status="401", code="invalid_key") == 1
    assert grew("keystile_request_duration_seconds_count", route="/svc") == 4
    assert grew("keystile_upstream_duration_seconds_count", route="/svc") == 3
    assert grew("keystile_key_cache_total", result="worker") >= 2
    assert "keystile_usage_flush_lag_seconds" in after
    assert "keystile_fail_open_total" in after or "keystile_store_errors_total" in after


def _plain(text: str, name: str) -> float:
    """An unlabelled sample's value."""
    return next((float(line.split()[1]) for line in text.splitlines()
                 if line.startswith(name + " ")), 0.0)


async def test_every_change_a_worker_applies_shows_in_the_invalidation_lag(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    before = await (await gateway.get("/metrics")).text()
    key = await admin.key(org["id"], scopes=["svc:read"])
    await admin.call("POST", f"/v1/keys/{key['id']}/pause", expect=200)

    async def heard_both() -> bool:
        after = await (await gateway.get("/metrics")).text()
        return (_plain(after, "keystile_invalidation_lag_seconds_count")
                - _plain(before, "keystile_invalidation_lag_seconds_count")) == 2
    await eventually(heard_both)
    after = await (await gateway.get("/metrics")).text()
    lag = (_plain(after, "keystile_invalidation_lag_seconds_sum")
           - _plain(before, "keystile_invalidation_lag_seconds_sum"))
    assert 0 <= lag < 5  # two changes on one machine: milliseconds, with room for a busy one


async def test_a_client_gone_before_the_answer_is_counted_499_not_an_error(
        gateway: TestClient, admin: Admin, org: dict[str, Any], upstream: Upstream,
        caplog: pytest.LogCaptureFixture) -> None:
    key = await admin.key(org["id"], scopes=["svc:read"])
    before = await (await gateway.get("/metrics")).text()
    assert gateway.server.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.server.port)
    writer.write(f"GET /svc/gate HTTP/1.1\r\nHost: t\r\nX-API-Key: {key['key']}\r\n"
                 "\r\n".encode())
    await asyncio.wait_for(upstream.arrived.wait(), 10)
    writer.transport.abort()  # the client leaves while the upstream is still working
    upstream.gate.set()
    for _ in range(200):  # until the gateway has finished with the request
        after = await (await gateway.get("/metrics")).text()
        if _value(after, "keystile_requests_total", status="499") > _value(
                before, "keystile_requests_total", status="499"):
            break
        await asyncio.sleep(0.01)
    assert _value(after, "keystile_requests_total", route="/svc", status="499",
                  code="client_closed") == 1 + _value(before, "keystile_requests_total",
                                                      route="/svc", status="499")
    assert _value(after, "keystile_requests_total", status="500") == _value(
        before, "keystile_requests_total", status="500")
    assert "unexpected gateway error" not in caplog.text


async def test_admin_metrics_need_the_operator(admin: Admin) -> None:
    resp = await admin.client.get("/metrics")
    assert resp.status == 401
    resp = await admin.client.get("/metrics", headers=OPERATOR)
    assert resp.status == 200 and "keystile_admin_requests_total" in await resp.text()


async def test_a_canary_key_never_reaches_a_log_line(
        gateway: TestClient, admin: Admin, org: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canary = await admin.key(org["id"], scopes=["svc:read"], name="canary")
    unknown = keyformat.generate("ks_live")
    for headers in ({"X-API-Key": canary["key"]}, {"X-API-Key": unknown},
                    {"Authorization": f"Bearer {canary['key']}"},
                    {"X-API-Key": canary["key"], "X-Provider": "nope"}):
        await gateway.get("/svc/x", headers=headers)
        await gateway.get("/bearer/x", headers=headers)
        await gateway.get("/down/x", headers=headers)
        await gateway.get("/_keystile/usage", headers=headers)
        await gateway.get(f"/svc/{canary['key']}", headers=headers)  # a key in the path
        await gateway.get("/svc/x", headers={**headers, "X-Request-Id": canary["key"]})
    await admin.call("POST", "/v1/verify", json={"key": canary["key"]})
    await admin.call("GET", "/v1/keys/self", headers={"X-API-Key": canary["key"]})
    # Everything Keystile logged (the test upstream's own aiohttp.access lines are not ours).
    ours = [r for r in caplog.records if r.name != "aiohttp.access"]
    logged = "".join(f"{r.getMessage()} {r.__dict__}" for r in ours)
    assert any(r.name == "keystile.access" for r in ours)  # the real access log was looked at
    assert canary["key"] not in logged and unknown not in logged
    assert canary["key"][:20] not in logged  # not even most of it


async def test_a_request_leaves_no_reference_cycle_behind(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    """Cycles are found only by the garbage collector, whose full passes over a worker's big
    caches pause it; a proxied request must free itself by reference counting."""
    from gateway.exchange import Exchange

    key = await admin.key(org["id"], scopes=["svc:read"])
    # The first request loads Redis scripts (a NOSCRIPT error and its traceback, once).
    assert (await gateway.get("/svc/x", headers={"X-API-Key": key["key"]})).status == 200
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            assert (await gateway.get("/svc/x", headers={"X-API-Key": key["key"]})).status == 200
        gc.collect()
        assert not [o for o in gc.garbage if isinstance(o, Exchange)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
