"""A rotation's grace, judged by the gateway itself: the old secret works at the gateway
during the grace, and from the first request after it ends it is refused there — though the
worker cached it while it was still good (admin ``/v1/verify`` is checked elsewhere)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin

GRACE_S = 2


async def _status(gateway: TestClient, raw: str) -> tuple[int, str | None]:
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": raw})
    body = await resp.json() if resp.content_type == "application/json" else None
    return resp.status, body["error"]["code"] if resp.status >= 400 and body else None


async def test_old_secret_is_refused_at_the_gateway_once_the_grace_ends(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"])
    assert await _status(gateway, key["key"]) == (200, None)
    rotated = await admin.call("POST", f"/v1/keys/{key['id']}/rotate",
                               json={"grace_seconds": GRACE_S}, expect=200)
    ends = datetime.fromisoformat(rotated["previous_expires_at"])

    # During the grace both secrets pass, and the old one is now cached by the worker (and
    # shared through Redis) with its end of grace.
    for _ in range(3):
        assert await _status(gateway, key["key"]) == (200, None)
        assert await _status(gateway, rotated["key"]) == (200, None)
    assert datetime.now(UTC) < ends, "the grace ended before it was observed; machine too slow"

    # Waiting for the clock (the condition is time itself), with a deadline.
    deadline = ends + timedelta(seconds=5)
    while datetime.now(UTC) <= ends + timedelta(milliseconds=20):
        assert datetime.now(UTC) < deadline
        await asyncio.sleep(0.02)
    # The first request after the grace is refused: the gateway judges the end itself, no
    # cache TTL or invalidation message stands in for it.
    assert await _status(gateway, key["key"]) == (401, "invalid_key")
    assert await _status(gateway, key["key"]) == (401, "invalid_key")
    assert await _status(gateway, rotated["key"]) == (200, None)
