"""Nuxera conformance: JWT-authenticated endpoints with integer ids, the documented object,
errors, management rate limits and FHIR / HL7 errors; then the key at the gateway."""

from __future__ import annotations

import time
from typing import Any

import jwt
from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin
from tests.dialects.conftest import JWT_SECRET
from tests.gateway.conftest import Upstream, eventually

BASE = "/api/apiKeys"
FIELDS = {"id", "key", "name", "type", "status", "is_default", "created_at", "expiry_at",
          "user_id"}


def token(user: object = "123", org: str = "tenant", **claims: Any) -> dict[str, str]:
    payload = {"sub": user, "org": org, "exp": int(time.time()) + 600, **claims}
    return {"Authorization": f"Bearer {jwt.encode(payload, JWT_SECRET, algorithm='HS256')}"}


async def test_documented_flow(dialect_admin: Admin, tenant: dict[str, Any],
                               dialect_gateway: TestClient, upstream: Upstream) -> None:
    me = token()
    created = await dialect_admin.call("POST", BASE, headers=me, json={
        "name": "Production API Key", "type": "ai-medical-note", "status": "active"},
        expect=201)
    assert set(created) == FIELDS
    assert isinstance(created["id"], int) and created["user_id"] == 123
    assert created["status"] == "active" and created["is_default"] is False
    raw = created["key"]
    second = await dialect_admin.call("POST", BASE, headers=me, json={
        "name": "Second", "type": "t2yd", "status": "paused"}, expect=201)
    assert second["status"] == "paused" and second["type"] == "t2yd"

    listed = await dialect_admin.call("GET", BASE, headers=me, expect=200)
    assert [k["id"] for k in listed] == [created["id"], second["id"]]
    assert all(k["key"].endswith("…") and raw not in k["key"] for k in listed)  # masked
    assert await dialect_admin.call("GET", f"{BASE}/", headers=me, expect=200) == listed
    got = await dialect_admin.call("GET", f"{BASE}/{created['id']}", headers=me, expect=200)
    assert got["name"] == "Production API Key" and got["key"] == raw[:7] + "…"

    updated = await dialect_admin.call("PUT", f"{BASE}/{created['id']}", headers=me,
                                       json={"name": "Updated Production Key"}, expect=200)
    assert updated["name"] == "Updated Production Key"

    # The key works at the gateway (x-api-key) until paused.
    assert (await dialect_gateway.get("/nuxera/transcribe",
                                      headers={"x-api-key": raw})).status == 200
    paused = await dialect_admin.call("PATCH", f"{BASE}/{created['id']}/pause", headers=me,
                                      expect=200)
    assert paused["status"] == "paused"

    async def gateway_says(status: int, text: str = "") -> bool:
        resp = await dialect_gateway.get("/nuxera/transcribe", headers={"x-api-key": raw})
        return resp.status == status and text in (await resp.text()).lower()

    # The pause reaches the gateway through the invalidation channel: 403 key_paused...
    await eventually(lambda: gateway_says(403, '"key_paused"'))
    resumed = await dialect_admin.call("PATCH", f"{BASE}/{created['id']}/resume", headers=me,
                                       expect=200)
    assert resumed["status"] == "active"
    await eventually(lambda: gateway_says(200))  # ...and so does the resume

    default = await dialect_admin.call("PATCH", f"{BASE}/setDefault", headers=me,
                                       json={"id": created["id"]}, expect=200)
    assert default["is_default"] is True
    switched = await dialect_admin.call("PATCH", f"{BASE}/setDefault", headers=me,
                                        json={"id": second["id"], "old_id": created["id"]},
                                        expect=200)
    assert switched["is_default"] is True
    old = await dialect_admin.call("GET", f"{BASE}/{created['id']}", headers=me, expect=200)
    assert old["is_default"] is False
    removed = await dialect_admin.call("PATCH", f"{BASE}/removeDefault", headers=me,
                                       json={"id": second["id"]}, expect=200)
    assert removed["is_default"] is False

    user_keys = await dialect_admin.call("GET", f"{BASE}/userKeys/123", headers=me, expect=200)
    assert {k["id"] for k in user_keys} == {created["id"], second["id"]}
    await dialect_admin.call("DELETE", f"{BASE}/{created['id']}", headers=me, expect=200)
    body = await dialect_admin.call("GET", f"{BASE}/{created['id']}", headers=me, expect=404)
    assert body["error"] == "API Key not found" and set(body) == {"error", "request_id"}


async def test_errors(dialect_admin: Admin, tenant: dict[str, Any]) -> None:
    assert (await dialect_admin.call("GET", BASE, headers={}, expect=401))["error"] == (
        "JWT token required")
    await dialect_admin.call("GET", BASE, headers={"Authorization": "Bearer x.y.z"}, expect=401)
    expired = token(exp=int(time.time()) - 10)
    assert (await dialect_admin.call("GET", BASE, headers=expired, expect=401))["error"] == (
        "JWT token expired")
    forged = {"Authorization": "Bearer " + jwt.encode(
        {"sub": "1", "org": "tenant"}, "another-secret-that-is-long-enough!!", algorithm="HS256")}
    await dialect_admin.call("GET", BASE, headers=forged, expect=401)
    await dialect_admin.call("GET", BASE, headers=token(org="nobody"), expect=401)
    me = token()
    body = await dialect_admin.call("POST", BASE, headers=me, json={"name": "x"}, expect=400)
    assert body["error"] == "Invalid request data: type: Field required"
    await dialect_admin.call("GET", f"{BASE}/abc", headers=me, expect=400)
    await dialect_admin.call("GET", f"{BASE}/999999", headers=me, expect=404)
    # Another user's key does not exist for this user.
    theirs = await dialect_admin.call("POST", BASE, headers=token(user="7"), json={
        "name": "t", "type": "t2yd", "status": "active"}, expect=201)
    await dialect_admin.call("GET", f"{BASE}/{theirs['id']}", headers=me, expect=404)
    # Errors in FHIR and HL7 on request.
    resp = await dialect_admin.client.get(f"{BASE}/999999", headers={
        **me, "x-response-format": "fhir"})
    outcome = await resp.json(content_type=None)
    assert resp.status == 404 and outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["text"] == "API Key not found"
    resp = await dialect_admin.client.get(BASE, headers={"x-response-format": "hl7"})
    assert resp.status == 401 and (await resp.text()).startswith("MSH|")


async def test_management_rate_limit_per_user(dialect_admin: Admin, tenant: dict[str, Any]
                                              ) -> None:
    me = token(user="500")
    statuses = [(await dialect_admin.client.get(BASE, headers=me)).status for _ in range(101)]
    assert statuses.count(200) == 100 and statuses[-1] == 429
    resp = await dialect_admin.client.get(BASE, headers=me)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert (await dialect_admin.client.get(BASE, headers=token(user="501"))).status == 200


async def test_users_reach_only_their_own_keys(dialect_admin: Admin, tenant: dict[str, Any]
                                               ) -> None:
    mine = await dialect_admin.call("POST", BASE, headers=token(user="2"), json={
        "name": "two", "type": "t2yd", "status": "active"}, expect=201)
    other = token(user="3")
    await dialect_admin.call("GET", f"{BASE}/userKeys/2", headers=other, expect=404)
    await dialect_admin.call("GET", f"{BASE}/{mine['id']}", headers=other, expect=404)
    # A JWT whose sub equals another dialect's owner reaches none of those keys, nor the
    # organisation's root key.
    clinic = await dialect_admin.key(tenant["org"]["id"], owner_id="41")
    root = await dialect_admin.key(tenant["org"]["id"], owner_id="40", root=True)
    sneaky = token(user="41")
    assert await dialect_admin.call("GET", BASE, headers=sneaky, expect=200) == []
    await dialect_admin.call("GET", f"{BASE}/{clinic['serial']}", headers=sneaky, expect=404)
    await dialect_admin.call("PATCH", f"{BASE}/{root['serial']}/pause", headers=token(user="40"),
                             expect=404)


async def test_tokens_without_expiry_and_odd_values_are_refused(dialect_admin: Admin,
                                                                tenant: dict[str, Any]) -> None:
    no_exp = {"Authorization": "Bearer " + jwt.encode({"sub": "1", "org": "tenant"},
                                                      JWT_SECRET, algorithm="HS256")}
    await dialect_admin.call("GET", BASE, headers=no_exp, expect=401)
    me = token()
    for payload in ({"name": "a\u0000b", "type": "t2yd", "status": "active"},
                    {"name": "x" * 300, "type": "t2yd", "status": "active"}):
        body = await dialect_admin.call("POST", BASE, headers=me, json=payload, expect=400)
        assert body["error"].startswith("Invalid request data")
    await dialect_admin.call("GET", f"{BASE}/1_0", headers=me, expect=400)
    await dialect_admin.call("GET", BASE, headers=token(user="x" * 300), expect=401)
    await dialect_admin.call("GET", BASE, headers=token(user="9" * 19), expect=401)


async def test_numeric_sub_is_the_same_user_and_user_id_is_always_an_integer(
        dialect_admin: Admin, tenant: dict[str, Any]) -> None:
    # The seed's user_id is an integer; a JWT's sub may carry it as a number or a string.
    created = await dialect_admin.call("POST", BASE, headers=token(user=42), json={
        "name": "n", "type": "t2yd", "status": "active"}, expect=201)
    assert created["user_id"] == 42
    for sub in (42, "42", "0042"):
        listed = await dialect_admin.call("GET", BASE, headers=token(user=sub),
                                          expect=200)
        assert [k["id"] for k in listed] == [created["id"]]
        assert all(type(k["user_id"]) is int for k in listed)
    mine = await dialect_admin.call("GET", f"{BASE}/userKeys/42", headers=token(user=42),
                                    expect=200)
    assert [k["user_id"] for k in mine] == [42]
    # A sub that is no user id is refused, saying so, and so is a non-integer user_id path.
    for sub in ("alice", True, -1, 4.5):
        body = await dialect_admin.call("GET", BASE, headers=token(user=sub),
                                        expect=401)
        assert "integer" in body["error"]
    await dialect_admin.call("GET", f"{BASE}/userKeys/alice", headers=token(user=42),
                             expect=400)


async def test_resuming_an_expired_key_is_refused(dialect_admin: Admin, tenant: dict[str, Any],
                                                  dialect_gateway: TestClient) -> None:
    me = token()
    expired = await dialect_admin.call("POST", BASE, headers=me, json={
        "name": "old", "type": "t2yd", "status": "expired"}, expect=201)
    assert expired["status"] == "expired"
    body = await dialect_admin.call("PATCH", f"{BASE}/{expired['id']}/resume", headers=me,
                                    expect=409)
    assert "expired" in body["error"]
    got = await dialect_admin.call("GET", f"{BASE}/{expired['id']}", headers=me, expect=200)
    assert got["status"] == "expired"
    resp = await dialect_gateway.get("/nuxera/transcribe",
                                     headers={"x-api-key": expired["key"]})
    assert resp.status == 401  # still refused at the gateway
    # Paused, then expired: resuming is refused too (it would stay expired).
    paused = await dialect_admin.call("POST", BASE, headers=me, json={
        "name": "p", "type": "t2yd", "status": "paused"}, expect=201)
    await dialect_admin.db.execute("UPDATE keys SET expires_at = now() WHERE serial = $1",
                                   paused["id"])
    await dialect_admin.call("PATCH", f"{BASE}/{paused['id']}/resume", headers=me, expect=409)
