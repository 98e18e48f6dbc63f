from __future__ import annotations

from typing import Any

from tests.admin_api.conftest import Admin, as_key


async def test_verify_codes(admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], scopes=["orders:*"], owner_id="clinic", metadata={"t": 1})

    async def verify(**payload: Any) -> dict[str, Any]:
        result: dict[str, Any] = await admin.call("POST", "/v1/verify", json=payload,
                                                  expect=200)
        return result

    ok = await verify(key=key["key"], scopes=["orders:read"], provider="acme")
    assert ok["valid"] is True and ok["code"] == "valid"
    assert ok["key_id"] == key["id"] and ok["owner_id"] == "clinic"
    assert ok["metadata"] == {"t": 1} and ok["scopes"] == ["orders:*"]

    denied = await verify(key=key["key"], scopes=["orders:read", "products:read"])
    assert denied["code"] == "insufficient_scope" and denied["valid"] is False
    assert denied["missing_scopes"] == ["products:read"]

    assert (await verify(key="nonsense"))["code"] == "invalid_key"
    assert (await verify(key=key["key"], provider="nobody"))["code"] == "invalid_provider"
    await admin.org("other")
    other = await verify(key=key["key"], provider="other")
    assert other == {"valid": False, "code": "invalid_key", **{k: None for k in other
                                                                if k not in ("valid", "code")}}

    await admin.call("POST", f"/v1/keys/{key['id']}/pause", expect=200)
    assert (await verify(key=key["key"]))["code"] == "key_paused"
    await admin.call("POST", f"/v1/keys/{key['id']}/resume", expect=200)
    await admin.db.execute("UPDATE keys SET expires_at = now() WHERE id = $1", key["id"])
    assert (await verify(key=key["key"]))["code"] == "key_expired"
    await admin.call("POST", f"/v1/keys/{key['id']}/revoke", expect=200)
    assert (await verify(key=key["key"]))["code"] == "key_revoked"


async def test_root_key_verifies_only_its_own_organisation(admin: Admin, org: dict[str, Any],
                                                           root: dict[str, Any]) -> None:
    mine = await admin.key(org["id"])
    other_org = await admin.org("other")
    theirs = await admin.key(other_org["id"])
    headers = as_key(root["key"])
    result = await admin.call("POST", "/v1/verify", json={"key": mine["key"]}, headers=headers,
                              expect=200)
    assert result["valid"] is True
    result = await admin.call("POST", "/v1/verify", json={"key": theirs["key"]},
                              headers=headers, expect=200)
    assert result["code"] == "invalid_key" and result["key_id"] is None


async def test_verify_input_errors(admin: Admin) -> None:
    body = await admin.call("POST", "/v1/verify", json={}, expect=422)
    assert body["error"]["fields"] == [{"field": "key", "message": "required field is missing"}]
    body = await admin.call("POST", "/v1/verify", json={"key": "k", "cost": -1}, expect=422)
    assert "cost" in body["error"]["message"]
    body = await admin.call("POST", "/v1/verify", data=b"[1,", expect=400)
    assert body["error"]["code"] == "malformed_json"
    body = await admin.call("POST", "/v1/verify", json=["key"], expect=422)
    assert body["error"]["code"] == "validation_failed"


async def test_verify_spends_limits_like_the_gateway(admin: Admin, org: dict[str, Any]) -> None:
    import asyncio

    key = await admin.key(org["id"], usage_limit=5, rate_limits=[{"limit": 3, "window_s": 60}])
    for _ in range(5):  # cost 0 checks without spending
        free = await admin.call("POST", "/v1/verify", json={"key": key["key"], "cost": 0},
                                expect=200)
        assert free["code"] == "valid" and free["rate_limit_remaining"] == 3
    results = [await admin.call("POST", "/v1/verify", json={"key": key["key"], "cost": 1},
                                expect=200) for _ in range(4)]
    assert [r["code"] for r in results] == ["valid", "valid", "valid", "rate_limited"]
    assert results[2]["usage_remaining"] == 2 and results[2]["rate_limit_remaining"] == 0
    assert results[3]["valid"] is False and 0 < results[3]["retry_after_s"] <= 61
    check = await admin.call("POST", "/v1/verify", json={"key": key["key"], "cost": 0},
                             expect=200)
    assert check["code"] == "rate_limited"  # ...and sees an exhausted limit

    async def flushed() -> bool:
        count = await admin.db.fetchval("SELECT usage_count FROM keys WHERE id = $1", key["id"])
        return bool(count == 3)

    deadline = asyncio.get_running_loop().time() + 5
    while not await flushed():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
