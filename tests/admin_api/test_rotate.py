from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from tests.admin_api.conftest import Admin


async def _verify(admin: Admin, raw: str) -> dict[str, Any]:
    result: dict[str, Any] = await admin.call("POST", "/v1/verify", json={"key": raw},
                                              expect=200)
    return result


async def test_rotate_without_grace_invalidates_old_secret_at_once(
        admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], name="k", scopes=["a:b"])
    rotated = await admin.call("POST", f"/v1/keys/{key['id']}/rotate", expect=200)
    assert rotated["id"] == key["id"] and rotated["key"] != key["key"]
    assert rotated["previous_expires_at"] is None
    assert rotated["prefix"] == rotated["key"][:12] and rotated["scopes"] == ["a:b"]
    assert (await _verify(admin, key["key"]))["code"] == "invalid_key"
    new = await _verify(admin, rotated["key"])
    assert new["valid"] is True and new["key_id"] == key["id"]


async def test_rotate_with_grace_keeps_old_secret_exactly_that_long(
        admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"])
    before = datetime.now(UTC)
    rotated = await admin.call("POST", f"/v1/keys/{key['id']}/rotate",
                               json={"grace_seconds": 2}, expect=200)
    ends = datetime.fromisoformat(rotated["previous_expires_at"])
    assert 1.5 <= (ends - before).total_seconds() <= 2.5
    stored = await admin.db.fetchval(
        "SELECT expires_at FROM key_secrets WHERE key_id = $1 AND expires_at IS NOT NULL",
        key["id"])
    assert stored == ends

    # Both secrets work during the grace period...
    assert (await _verify(admin, key["key"]))["valid"] is True
    assert (await _verify(admin, rotated["key"]))["valid"] is True
    # ...and the old one stops once it is over (waiting for the clock, not for a side effect).
    await asyncio.sleep(max((ends - datetime.now(UTC)).total_seconds(), 0) + 0.05)
    assert (await _verify(admin, key["key"]))["code"] == "invalid_key"
    assert (await _verify(admin, rotated["key"]))["valid"] is True


async def test_second_rotation_does_not_extend_an_earlier_grace(
        admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"])
    first = await admin.call("POST", f"/v1/keys/{key['id']}/rotate",
                             json={"grace_seconds": 60}, expect=200)
    await admin.call("POST", f"/v1/keys/{key['id']}/rotate", json={"grace_seconds": 0},
                     expect=200)
    for raw in (key["key"], first["key"]):
        assert (await _verify(admin, raw))["code"] == "invalid_key"


async def test_rotate_rejects_bad_grace(admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"])
    for grace in (-1, "10", 10**9):
        body = await admin.call("POST", f"/v1/keys/{key['id']}/rotate",
                                json={"grace_seconds": grace}, expect=422)
        assert "grace_seconds" in body["error"]["message"]
