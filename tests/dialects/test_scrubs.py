"""Scrubs conformance: every documented request, error case and field, then the clinic key at
the gateway with its usage limit."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin
from tests.gateway.conftest import Upstream, eventually

PATH = "/api/v1/api-key"


def creds(raw: str, provider: str = "tenant") -> dict[str, str]:
    return {"X-Scrubs-Clinic-Api-Key": raw, "X-Scrubs-Clinic-Provider": provider}


async def test_documented_flow(dialect_admin: Admin, tenant: dict[str, Any],
                               dialect_gateway: TestClient, upstream: Upstream) -> None:
    root = creds(tenant["root"]["key"])
    created = await dialect_admin.call("POST", PATH, headers=root, json={
        "clinic_id": "00A123", "friendly_name": "New Clinic API Key", "usage_limit": 100},
        expect=201)
    assert set(created) == {"apiKey", "friendly_name", "created", "clinic_id", "usage_limit",
                            "root"}
    assert created["clinic_id"] == "00A123" and created["usage_limit"] == 100
    assert created["root"] is False and created["created"].endswith("Z")
    clinic = creds(created["apiKey"])

    me = await dialect_admin.call("GET", PATH, headers=clinic, expect=200)
    assert set(me) == {"id", "friendly_name", "created", "clinic_id", "usage_limit", "root"}
    everyone = await dialect_admin.call("GET", f"{PATH}?list_all=true", headers=root,
                                        expect=200)
    assert {k["id"] for k in everyone} == {me["id"], tenant["root"]["id"]}

    updated = await dialect_admin.call("PUT", PATH, headers=root, json={
        "id": me["id"], "friendly_name": "Updated Clinic API Key", "usage_limit": 1500},
        expect=200)
    assert updated["friendly_name"] == "Updated Clinic API Key"
    assert updated["usage_limit"] == 1500

    assert (await dialect_gateway.get("/scrubs/notes", headers=clinic)).status == 200
    deleted = await dialect_admin.call("DELETE", f"{PATH}?id={me['id']}", headers=root,
                                       expect=200)
    assert deleted == {"message": "API key deleted successfully"}
    # Gone: from the admin API, from the dialect's own list, and at the gateway (where it was
    # cached a moment ago; the deletion reaches it through the invalidation channel).
    gone = await dialect_admin.call("GET", f"/v1/keys/{me['id']}", expect=404)
    assert gone["error"]["code"] == "key_not_found"
    everyone = await dialect_admin.call("GET", f"{PATH}?list_all=true", headers=root,
                                        expect=200)
    assert {k["id"] for k in everyone} == {tenant["root"]["id"]}

    async def refused() -> bool:
        return (await dialect_gateway.get("/scrubs/notes", headers=clinic)).status == 401

    await eventually(refused)


async def test_default_usage_limit_is_enforced_at_the_gateway(
        dialect_admin: Admin, tenant: dict[str, Any], dialect_gateway: TestClient,
        upstream: Upstream) -> None:
    created = await dialect_admin.call("POST", PATH, headers=creds(tenant["root"]["key"]),
                                       json={"clinic_id": "C1", "friendly_name": "c"},
                                       expect=201)
    assert created["usage_limit"] == 5
    statuses = Counter([(await dialect_gateway.get(
        "/scrubs/notes", headers=creds(created["apiKey"]))).status for _ in range(7)])
    assert statuses == Counter({200: 5, 429: 2})
    assert upstream.seen[-1]["headers"]["X-Keystile-Owner-Id"] == "C1"
    assert "X-Scrubs-Clinic-Api-Key" not in upstream.seen[-1]["headers"]
    # The gateway wants the provider header too, and the right one.
    resp = await dialect_gateway.get("/scrubs/notes",
                                     headers={"X-Scrubs-Clinic-Api-Key": created["apiKey"]})
    assert resp.status == 401
    resp = await dialect_gateway.get("/scrubs/notes", headers=creds(created["apiKey"], "nope"))
    assert resp.status == 400


async def test_every_documented_error(dialect_admin: Admin, tenant: dict[str, Any]) -> None:
    root = creds(tenant["root"]["key"])

    async def expect(status: int, message: str, method: str, path: str = PATH,
                     headers: dict[str, str] | None = None, **kwargs: Any) -> None:
        body = await dialect_admin.call(method, path, headers=root if headers is None
                                        else headers, expect=status, **kwargs)
        assert body["error"].startswith(message), body

    # Common authentication errors.
    await expect(401, "API key authentication failed.", "GET", headers={})
    await expect(401, "API key authentication failed.", "GET",
                 headers={"X-Scrubs-Clinic-Api-Key": tenant["root"]["key"]})
    await expect(400, "Provider ID is invalid.", "GET",
                 headers=creds(tenant["root"]["key"], "unknown-provider"))
    await expect(401, "API key authentication failed.", "GET", headers=creds("sk_bogus"))
    other = await dialect_admin.org("other")
    await expect(401, "API key authentication failed.", "GET",
                 headers=creds(tenant["root"]["key"], other["provider_id"]))
    # Request validation.
    await expect(400, "Request body is invalid.", "POST", json={"clinic_id": "x"})
    await expect(400, "Request body is invalid.", "POST",
                 json={"clinic_id": "x", "friendly_name": "y", "usage_limit": "ten"})
    await expect(400, "Request body is invalid.", "PUT", json={"friendly_name": "y"})
    await expect(400, "API key ID is missing.", "DELETE")
    # Root requirements.
    sub = await dialect_admin.call("POST", PATH, headers=root,
                                   json={"clinic_id": "S", "friendly_name": "s"}, expect=201)
    sub_headers = creds(sub["apiKey"])
    await expect(403, "Root API key is required for list_all=true.", "GET",
                 f"{PATH}?list_all=true", headers=sub_headers)
    await expect(403, "Root API key is required.", "POST", headers=sub_headers,
                 json={"clinic_id": "T", "friendly_name": "t"})
    await expect(403, "Root API key is required.", "PUT", headers=sub_headers,
                 json={"id": "key_x"})
    await expect(403, "Root API key is required.", "DELETE", f"{PATH}?id=key_x",
                 headers=sub_headers)
    # Creation, update and deletion validation.
    await expect(409, "Clinic already has an API key.", "POST",
                 json={"clinic_id": "S", "friendly_name": "again"})
    other_root = await dialect_admin.key(tenant["org"]["id"], root=True, name="other root")
    await expect(403, "Cannot update another root key.", "PUT",
                 json={"id": other_root["id"], "friendly_name": "x"})
    await expect(404, "API key was not found.", "PUT",
                 json={"id": "key_AAAAAAAAAAAAAAAAAAAAAA", "friendly_name": "x"})
    await expect(404, "API key was not found.", "DELETE", f"{PATH}?id=key_missing")
    # A root key may update itself.
    me = await dialect_admin.call("PUT", PATH, headers=root,
                                  json={"id": tenant["root"]["id"], "friendly_name": "me"},
                                  expect=200)
    assert me["friendly_name"] == "me" and me["root"] is True


async def test_odd_values_are_400(dialect_admin: Admin, tenant: dict[str, Any]) -> None:
    root = creds(tenant["root"]["key"])
    await dialect_admin.call("POST", PATH, headers=root,
                             json={"clinic_id": "a\u0000", "friendly_name": "x"}, expect=400)
    created = await dialect_admin.call("POST", PATH, headers=root,
                                       json={"clinic_id": "N", "friendly_name": "n"}, expect=201)
    me = await dialect_admin.call("GET", PATH, headers=creds(created["apiKey"]), expect=200)
    body = await dialect_admin.call("PUT", PATH, headers=root,
                                    json={"id": me["id"], "usage_limit": None}, expect=400)
    assert "usage_limit must be numeric" in body["error"]


async def test_concurrent_creations_for_one_clinic_leave_one_key(
        dialect_admin: Admin, tenant: dict[str, Any]) -> None:
    import asyncio

    root = creds(tenant["root"]["key"])
    results = await asyncio.gather(*(dialect_admin.client.post(
        PATH, headers=root, json={"clinic_id": "RACE", "friendly_name": f"k{i}"})
        for i in range(8)))
    assert sorted(r.status for r in results) == [201] + [409] * 7
    assert await dialect_admin.db.fetchval(
        "SELECT count(*) FROM keys WHERE owner_id = 'RACE'") == 1


async def test_usage_limit_is_a_whole_number_and_bad_bodies_say_what_is_wrong(
        dialect_admin: Admin, tenant: dict[str, Any]) -> None:
    root = creds(tenant["root"]["key"])
    # The seed types usage_limit as a number: 100.0 is 100 calls.
    created = await dialect_admin.call("POST", PATH, headers=root, json={
        "clinic_id": "W", "friendly_name": "w", "usage_limit": 100.0}, expect=201)
    assert created["usage_limit"] == 100 and type(created["usage_limit"]) is int
    me = await dialect_admin.call("GET", PATH, headers=creds(created["apiKey"]), expect=200)
    for method, payload in (("POST", {"clinic_id": "F", "friendly_name": "f"}),
                            ("PUT", {"id": me["id"]})):
        body = await dialect_admin.call(method, PATH, headers=root,
                                        json={**payload, "usage_limit": 10.5}, expect=400)
        assert body["error"] == ("Request body is invalid. usage_limit: must be a whole "
                                 "number of API calls (got 10.5).")
    body = await dialect_admin.call("PUT", PATH, headers=root,
                                    json={"id": me["id"], "usage_limit": 250.0}, expect=200)
    assert body["usage_limit"] == 250
    for payload, says in (({"clinic_id": "G", "friendly_name": "g", "usage_limit": "ten"},
                           "usage_limit: must be numeric"),
                          ({"clinic_id": "G", "friendly_name": "g", "usage_limit": -1},
                           "usage_limit: Input should be greater than or equal to 0"),
                          ({"clinic_id": "G"}, "clinic_id and friendly_name are required")):
        body = await dialect_admin.call("POST", PATH, headers=root, json=payload, expect=400)
        assert body["error"].startswith("Request body is invalid.") and says in body["error"]
    for method in ("POST", "PUT"):
        body = await dialect_admin.call(method, PATH, headers=root, data=b"{not json",
                                        expect=400)
        assert body["error"] == "Request body is invalid. The body is not valid JSON."
    assert await dialect_admin.db.fetchval(
        "SELECT count(*) FROM keys WHERE owner_id IN ('F', 'G')") == 0
