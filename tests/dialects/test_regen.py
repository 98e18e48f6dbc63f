"""Regen conformance: the documented endpoints, fields and rotation grace; then the key at
the gateway with its scopes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin
from tests.gateway.conftest import Upstream

BASE = "/api/v1/api-keys"
FIELDS = {"id", "name", "keyPrefix", "scopes", "createdAt", "expiresAt", "lastUsedAt"}


async def test_documented_flow(dialect_admin: Admin, tenant: dict[str, Any],
                               dialect_gateway: TestClient, upstream: Upstream) -> None:
    auth = {"X-API-Key": tenant["root"]["key"]}
    created = await dialect_admin.call("POST", BASE, headers=auth, json={
        "name": "Production Integration",
        "scopes": ["orders:read", "orders:write", "products:read", "inventory:read"],
        "expiresAt": "2099-01-20T00:00:00Z"}, expect=201)
    assert set(created) == FIELDS | {"key"}
    assert created["key"].startswith("rg_") and created["keyPrefix"] == created["key"][:7]
    assert created["lastUsedAt"] is None

    listed = await dialect_admin.call("GET", BASE, headers=auth, expect=200)
    assert all(set(k) == FIELDS for k in listed["data"])
    got = await dialect_admin.call("GET", f"{BASE}/{created['id']}", headers=auth, expect=200)
    assert set(got) == FIELDS and got["name"] == "Production Integration"

    updated = await dialect_admin.call("PUT", f"{BASE}/{created['id']}", headers=auth,
                                       json={"name": "Renamed", "scopes": ["orders:read"]},
                                       expect=200)
    assert updated["name"] == "Renamed" and updated["scopes"] == ["orders:read"]

    # At the gateway: X-API-Key; the key's scopes travel to the upstream.
    resp = await dialect_gateway.get("/regen/orders", headers={"X-API-Key": created["key"]})
    assert resp.status == 200
    assert upstream.seen[-1]["headers"]["X-Keystile-Scopes"] == "orders:read"

    rotated = await dialect_admin.call("POST", f"{BASE}/{created['id']}/rotate", headers=auth,
                                       expect=200)
    ends = datetime.fromisoformat(rotated["previousKeyExpiresAt"])
    assert 290 < (ends - datetime.now(UTC)).total_seconds() <= 300  # "valid for 5 minutes"
    for raw in (created["key"], rotated["key"]):
        resp = await dialect_gateway.get("/regen/orders", headers={"X-API-Key": raw})
        assert resp.status == 200

    await dialect_admin.call("DELETE", f"{BASE}/{created['id']}", headers=auth, expect=200)
    await dialect_admin.call("GET", f"{BASE}/{created['id']}", headers=auth, expect=404)


async def test_unknown_scope_is_400_naming_it(dialect_admin: Admin, tenant: dict[str, Any]
                                             ) -> None:
    auth = {"X-API-Key": tenant["root"]["key"]}
    body = await dialect_admin.call("POST", BASE, headers=auth, json={
        "name": "x", "scopes": ["orders:read", "payroll:read"]}, expect=400)
    assert "payroll:read" in body["error"] and "orders:write" in body["error"]
    body = await dialect_admin.call("POST", BASE, headers={}, json={"name": "x", "scopes": []},
                                    expect=401)
    await dialect_admin.call("GET", BASE, headers={"X-API-Key": "rg_nonsense"}, expect=401)


async def test_expiry_holds_at_the_gateway(dialect_admin: Admin, tenant: dict[str, Any],
                                           dialect_gateway: TestClient) -> None:
    import asyncio

    auth = {"X-API-Key": tenant["root"]["key"]}
    key = await dialect_admin.call("POST", BASE, headers=auth, json={
        "name": "soon", "scopes": ["orders:read"]}, expect=201)
    headers = {"X-API-Key": key["key"]}
    assert (await dialect_gateway.get("/regen/x", headers=headers)).status == 200
    await dialect_admin.call("PUT", f"{BASE}/{key['id']}", headers=auth,
                             json={"expiresAt": "2001-01-01T00:00:00Z"}, expect=200)
    for _ in range(100):
        resp = await dialect_gateway.get("/regen/x", headers=headers)
        if resp.status == 401:
            break
        await asyncio.sleep(0.01)
    assert (await resp.json())["error"]["code"] == "key_expired"


async def test_a_prefix_moves_the_dialect(aiohttp_client: Any, dialect_settings: Any,
                                          tenant: dict[str, Any], db: Any) -> None:
    from admin_api.app import create_app
    from gateway.settings import DialectOptions

    options = dict(dialect_settings.dialect)
    options["regen"] = DialectOptions(prefix="/regen")
    client = await aiohttp_client(create_app(dialect_settings.model_copy(
        update={"dialect": options})))
    resp = await client.get("/regen/api/v1/api-keys",
                            headers={"X-API-Key": tenant["root"]["key"]})
    assert resp.status == 200
    assert (await client.get("/api/v1/api-keys")).status == 404


async def test_values_the_core_refuses_are_400(dialect_admin: Admin, tenant: dict[str, Any]
                                               ) -> None:
    auth = {"X-API-Key": tenant["root"]["key"]}
    for payload in ({"name": "x" * 300, "scopes": []}, {"name": "a\u0000", "scopes": []},
                    {"name": "x", "scopes": [], "expiresAt": "1990-01-01T00:00:00Z"}):
        body = await dialect_admin.call("POST", BASE, headers=auth, json=payload, expect=400)
        assert body["error"].startswith("Request body is invalid")
