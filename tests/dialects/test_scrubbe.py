"""Scrubbe conformance: every documented endpoint and behaviour, then the key at the gateway."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin
from tests.gateway.conftest import Upstream

BASE = "/api/v1/apikey"


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


async def test_create_list_rotate_revoke_delete(dialect_admin: Admin, tenant: dict[str, Any],
                                                dialect_gateway: TestClient,
                                                upstream: Upstream) -> None:
    auth = bearer(tenant["root"]["key"])
    created = await dialect_admin.call("POST", f"{BASE}/createapikey", headers=auth, json={
        "name": "Production Key", "environment": "PRODUCTION",
        "scopes": ["incidents:read", "incidents:write"],
        "expiresAt": "2099-12-31T00:00:00Z"}, expect=201)
    assert created["name"] == "Production Key" and created["environment"] == "PRODUCTION"
    assert created["scopes"] == ["incidents:read", "incidents:write"]
    assert created["expiresAt"] == "2099-12-31T00:00:00Z" and created["status"] == "ACTIVE"
    raw = created["key"]
    assert isinstance(raw, str) and created["keyPrefix"] == raw[:7]

    listed = await dialect_admin.call("GET", f"{BASE}/apikeys", headers=auth, expect=200)
    mine = next(k for k in listed["data"] if k["id"] == created["id"])
    assert "key" not in mine and raw not in str(listed)

    # Clients use X-API-Key at the gateway; a key in the query string is refused.
    resp = await dialect_gateway.get("/scrubbe/incidents", headers={"X-API-Key": raw})
    assert resp.status == 200 and upstream.seen[-1]["headers"]["X-Keystile-Key-Id"] == (
        created["id"])
    resp = await dialect_gateway.get(f"/scrubbe/incidents?api_key={raw}")
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "key_in_query"
    assert "X-API-Key header" in body["error"]["message"]

    rotated = await dialect_admin.call("POST", f"{BASE}/{created['id']}/rotate", headers=auth,
                                       expect=200)
    assert rotated["id"] == created["id"] and rotated["key"] != raw
    # The old value stops at once.
    old = await dialect_admin.call("POST", "/v1/verify", json={"key": raw},
                                   headers={"Authorization": "Bearer "
                                            "test-operator-token-0123456789"}, expect=200)
    assert old["code"] == "invalid_key"

    revoked = await dialect_admin.call("POST", f"{BASE}/{created['id']}/revoke", headers=auth,
                                       expect=200)
    assert revoked["status"] == "REVOKED"
    listed = await dialect_admin.call("GET", f"{BASE}/apikeys", headers=auth, expect=200)
    assert any(k["id"] == created["id"] and k["status"] == "REVOKED" for k in listed["data"])

    await dialect_admin.call("DELETE", f"{BASE}/{created['id']}", headers=auth, expect=200)
    listed = await dialect_admin.call("GET", f"{BASE}/apikeys", headers=auth, expect=200)
    assert all(k["id"] != created["id"] for k in listed["data"])
    await dialect_admin.call("DELETE", f"{BASE}/{created['id']}", headers=auth, expect=404)


async def test_errors(dialect_admin: Admin, tenant: dict[str, Any]) -> None:
    auth = bearer(tenant["root"]["key"])
    body = await dialect_admin.call("GET", f"{BASE}/apikeys", headers={}, expect=401)
    assert "Bearer" in body["error"]
    await dialect_admin.call("GET", f"{BASE}/apikeys", headers=bearer("nonsense"), expect=401)
    for payload in ({"name": "x", "environment": "PROD", "scopes": []},
                    {"environment": "STAGING", "scopes": []},
                    {"name": "x", "environment": "STAGING"}):
        body = await dialect_admin.call("POST", f"{BASE}/createapikey", headers=auth,
                                        json=payload, expect=400)
        assert body["error"].startswith("the request body is invalid")
    sub = await dialect_admin.call("POST", f"{BASE}/createapikey", headers=auth, json={
        "name": "sub", "environment": "DEVELOPMENT", "scopes": ["a:b"]}, expect=201)
    body = await dialect_admin.call("GET", f"{BASE}/apikeys", headers=bearer(sub["key"]),
                                    expect=403)
    assert "root" in body["error"]
    await dialect_admin.call("POST", f"{BASE}/key_unknown/revoke", headers=auth, expect=404)


async def test_status_and_expiry_hold_at_the_gateway(dialect_admin: Admin, tenant: dict[str, Any],
                                                     dialect_gateway: TestClient) -> None:
    import asyncio

    auth = bearer(tenant["root"]["key"])
    key = await dialect_admin.call("POST", f"{BASE}/createapikey", headers=auth, json={
        "name": "k", "environment": "STAGING", "scopes": ["incidents:read"]}, expect=201)
    headers = {"X-API-Key": key["key"]}
    assert (await dialect_gateway.get("/scrubbe/x", headers=headers)).status == 200
    await dialect_admin.call("POST", f"{BASE}/{key['id']}/revoke", headers=auth, expect=200)
    for _ in range(100):  # delivered through the invalidation channel
        resp = await dialect_gateway.get("/scrubbe/x", headers=headers)
        if resp.status == 401:
            break
        await asyncio.sleep(0.01)
    assert (await resp.json())["error"]["code"] == "key_revoked"
