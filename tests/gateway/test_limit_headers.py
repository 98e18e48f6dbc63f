"""``RateLimit-*`` headers with several windows: ``RateLimit-Policy`` lists every window,
``RateLimit-Limit``/``-Remaining``/``-Reset`` describe the most restrictive one, and
``RateLimit-Reset`` is whole seconds until that window frees room, in (0, window]."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin


async def _headers(gateway: TestClient, raw: str) -> dict[str, str]:
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": raw})
    assert resp.status == 200, await resp.text()
    return {name: resp.headers[name] for name in
            ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")}


# A day, plus at most one bucket (1/60 of it): how late a bucketed window may free room.
DAY_AND_A_BUCKET = 86400 + 1440


def _reset(headers: dict[str, str]) -> int:
    value = headers["RateLimit-Reset"]
    assert value.isdigit(), value  # an integer number of seconds, not a date or a fraction
    return int(value)


async def test_multi_window_policy_and_the_most_restrictive_window(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    # The short window is the most restrictive: the reset is under a second away.
    short = await admin.key(org["id"], rate_limits=[{"limit": 10, "window_s": 1},
                                                    {"limit": 1000, "window_s": 86400}])
    headers = await _headers(gateway, short["key"])
    assert headers["RateLimit-Policy"] == "10;w=1, 1000;w=86400"
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("10", "9")
    assert 0 < _reset(headers) <= 2  # a second, plus at most one bucket (1/60 of it)

    # The daily window is the most restrictive: the reset follows it, not the 1-s window.
    daily = await admin.key(org["id"], rate_limits=[{"limit": 10, "window_s": 1},
                                                    {"limit": 3, "window_s": 86400}])
    headers = await _headers(gateway, daily["key"])
    assert headers["RateLimit-Policy"] == "10;w=1, 3;w=86400"
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("3", "2")
    assert 1 < _reset(headers) <= DAY_AND_A_BUCKET
    headers = await _headers(gateway, daily["key"])
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("3", "1")
    assert 1 < _reset(headers) <= DAY_AND_A_BUCKET
    # Spent: the refusal still says when the window frees room.
    assert (await _headers(gateway, daily["key"]))["RateLimit-Remaining"] == "0"
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": daily["key"]})
    assert resp.status == 429 and resp.headers["RateLimit-Remaining"] == "0"
    assert 1 < int(resp.headers["RateLimit-Reset"]) <= DAY_AND_A_BUCKET
    assert 0 < int(resp.headers["Retry-After"]) <= DAY_AND_A_BUCKET
