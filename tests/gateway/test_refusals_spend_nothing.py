"""A request refused by any stage before the limits stage spends nothing: not its lifetime
usage, not its quota, not a rate-limit window — as the key's live usage reports it. (Were
limits judged before scopes or the provider, a 403 would spend quota.)"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin
from tests.gateway.conftest import Upstream


def _counters(usage: dict[str, Any]) -> tuple[int, int, list[int]]:
    return (usage["usage_count"], usage["quota"]["used"],
            [window["remaining"] for window in usage["rate_limits"]])


async def test_requests_refused_before_the_limits_stage_spend_nothing(
        gateway: TestClient, upstream: Upstream, admin: Admin, org: dict[str, Any]) -> None:
    other = await admin.org("other")
    key = await admin.key(org["id"], scopes=["svc:read"], usage_limit=1000,
                          quota={"limit": 1000, "period": "month"},
                          rate_limits=[{"limit": 1000, "window_s": 3600}])
    raw, path = key["key"], f"/v1/keys/{key['id']}/usage"

    async def usage() -> tuple[int, int, list[int]]:
        return _counters(await admin.call("GET", path, expect=200))

    assert (await gateway.get("/svc/x", headers={"X-API-Key": raw})).status == 200
    before = await usage()
    assert before == (1, 1, [999])
    seen = len(upstream.seen)

    refusals: list[tuple[str, str, dict[str, str], int, str]] = [
        ("GET", "/svc/x", {"X-Big": "v" * 9000}, 431, "headers_too_large"),
        ("GET", "/svc/x", {"Host": "a/x"}, 400, "invalid_header"),
        ("GET", "/svc/a%2Fb", {}, 400, "invalid_path"),
        ("GET", f"/svc/x?api_key={raw}", {}, 400, "key_in_query"),
        ("DELETE", "/svc/x", {}, 405, "method_not_allowed"),
        ("GET", "/nowhere/x", {}, 404, "route_not_found"),
        ("GET", "/bearer/x", {}, 401, "missing_key"),  # the route wants a bearer token
        ("GET", "/svc/x", {"X-Provider": "nobody"}, 400, "invalid_provider"),
        ("GET", "/svc/x", {"X-Provider": other["provider_id"]}, 401, "invalid_key"),
        ("POST", "/svc/x", {}, 403, "insufficient_scope"),
        ("PUT", "/partial/x", {}, 403, "insufficient_scope"),  # no scope names PUT
    ]
    for method, target, extra, status, code in refusals:
        resp = await gateway.request(method, target, headers={"X-API-Key": raw, **extra})
        body = await resp.json()
        assert (resp.status, body["error"]["code"]) == (status, code), (method, target, body)
        assert await usage() == before, (method, target, code)

    await admin.call("POST", f"/v1/keys/{key['id']}/pause", expect=200)
    resp = await gateway.get("/svc/x", headers={"X-API-Key": raw})
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "key_paused")
    assert await usage() == before
    await admin.call("POST", f"/v1/keys/{key['id']}/resume", expect=200)
    assert len(upstream.seen) == seen

    # The measure is live: one admitted request moves every counter by one.
    assert (await gateway.get("/svc/x", headers={"X-API-Key": raw})).status == 200
    assert await usage() == (2, 2, [998])
