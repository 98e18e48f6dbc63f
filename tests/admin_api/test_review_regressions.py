"""Authorisation and robustness cases found in review, each pinned by a test."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from tests.admin_api.conftest import OPERATOR, Admin, as_key


async def test_set_and_unset_default_concurrently_never_deadlock(
        admin: Admin, org: dict[str, Any]) -> None:
    for _ in range(15):
        a = await admin.key(org["id"], owner_id="clinic", is_default=True)
        b = await admin.key(org["id"], owner_id="clinic")
        results = await asyncio.gather(
            admin.client.put(f"/v1/keys/{b['id']}/default", headers=OPERATOR),
            admin.client.delete(f"/v1/keys/{a['id']}/default", headers=OPERATOR))
        assert [r.status for r in results] == [200, 200]
        assert await admin.db.fetchval(
            "SELECT count(*) FROM keys WHERE owner_id = 'clinic' AND is_default") <= 1
        await admin.db.execute("DELETE FROM keys WHERE owner_id = 'clinic'")


async def test_root_key_cannot_rotate_or_change_a_wider_key(admin: Admin, org: dict[str, Any]
                                                            ) -> None:
    narrow = await admin.key(org["id"], root=True, scopes=["orders:read"])
    wide = await admin.key(org["id"], scopes=["*"])
    for method, suffix in (("POST", "/rotate"), ("PATCH", ""), ("POST", "/pause"),
                           ("DELETE", "")):
        body = await admin.call(method, f"/v1/keys/{wide['id']}{suffix}",
                                json={"name": "x"} if method == "PATCH" else None,
                                headers=as_key(narrow["key"]), expect=403)
        assert body["error"]["code"] == "insufficient_scope"


async def test_root_key_cannot_take_the_default_from_another_root_key(
        admin: Admin, org: dict[str, Any], root: dict[str, Any]) -> None:
    other_root = await admin.key(org["id"], root=True, owner_id="team-b", is_default=True)
    body = await admin.call("POST", "/v1/keys", json={"owner_id": "team-b", "is_default": True},
                            headers=as_key(root["key"]), expect=403)
    assert body["error"]["code"] == "root_key_protected"
    mine = await admin.key(headers=as_key(root["key"]), owner_id="team-b")
    body = await admin.call("PUT", f"/v1/keys/{mine['id']}/default",
                            headers=as_key(root["key"]), expect=403)
    assert body["error"]["code"] == "root_key_protected"
    assert await admin.db.fetchval("SELECT is_default FROM keys WHERE id = $1",
                                   other_root["id"]) is True
    # The operator may, and the previous default's change is audited on its own row.
    await admin.call("PUT", f"/v1/keys/{mine['id']}/default", expect=200)
    trail = await admin.call("GET", f"/v1/audit?target_id={other_root['id']}", expect=200)
    assert trail["data"][0]["action"] == "key.unset_default"
    assert trail["data"][0]["changes"] == {"is_default": False, "replaced_by": mine["id"]}


async def test_a_key_cannot_lift_its_own_limits(admin: Admin, org: dict[str, Any]) -> None:
    limited = await admin.key(org["id"], root=True, scopes=["*"], usage_limit=10,
                              expires_at="2099-01-01T00:00:00Z",
                              quota={"limit": 5, "period": "day"},
                              rate_limits=[{"limit": 3, "window_s": 1}])
    me = as_key(limited["key"])
    for change in ({"expires_at": None}, {"usage_limit": None}, {"quota": None},
                   {"rate_limits": []}):
        body = await admin.call("PATCH", f"/v1/keys/{limited['id']}", json=change, headers=me,
                                expect=403)
        assert body["error"]["code"] == "own_limits_protected"
    await admin.call("POST", f"/v1/keys/{limited['id']}/usage", json={"op": "set", "value": 0},
                     headers=me, expect=403)
    renamed = await admin.call("PATCH", f"/v1/keys/{limited['id']}",
                               json={"name": "still me", "scopes": ["orders:*"]}, headers=me,
                               expect=200)
    assert renamed["usage_limit"] == 10 and renamed["scopes"] == ["orders:*"]


async def test_rotation_reports_when_the_last_old_secret_stops(admin: Admin, org: dict[str, Any]
                                                              ) -> None:
    key = await admin.key(org["id"])
    first = await admin.call("POST", f"/v1/keys/{key['id']}/rotate", json={"grace_seconds": 60},
                             expect=200)
    second = await admin.call("POST", f"/v1/keys/{key['id']}/rotate",
                              json={"grace_seconds": 3600}, expect=200)
    ends = datetime.fromisoformat(second["previous_expires_at"])
    assert 3500 < (ends - datetime.now(UTC)).total_seconds() <= 3600
    for raw in (key["key"], first["key"], second["key"]):
        result = await admin.call("POST", "/v1/verify", json={"key": raw}, expect=200)
        assert result["valid"] is True


async def test_values_postgres_cannot_store_are_422_naming_the_field(
        admin: Admin, org: dict[str, Any]) -> None:
    cases: list[tuple[str, str, dict[str, Any] | bytes, str]] = [
        ("POST", "/v1/keys", b'{"org_id": "%s", "metadata": {"x": NaN}}' % org["id"].encode(),
         "metadata"),
        ("POST", "/v1/keys", {"org_id": org["id"], "expires_at": "9999-12-31T23:59:59-14:00"},
         "expires_at"),
        ("POST", "/v1/orgs", {"name": "x", "provider_id": "x",
                              "key_defaults": {"expires_in_s": 2**40}},
         "key_defaults.expires_in_s"),
    ]
    for method, path, payload, field in cases:
        kwargs = {"data": payload} if isinstance(payload, bytes) else {"json": payload}
        body = await admin.call(method, path, expect=422, **kwargs)
        assert field in {f["field"] for f in body["error"].get("fields", [])} or (
            field in body["error"]["message"]), (payload, body)
    # A metadata integer beyond 64 bits is a JSON number like any other: kept as a double.
    big = await admin.call("POST", "/v1/keys", json={"org_id": org["id"],
                                                     "metadata": {"x": 10**30, "y": 2**63 - 1}},
                           expect=201)
    assert big["metadata"] == {"x": 1e30, "y": 2**63 - 1}
    key = await admin.key(org["id"])
    await admin.call("POST", f"/v1/keys/{key['id']}/usage", json={"op": "set", "value": 2**62},
                     expect=200)
    body = await admin.call("POST", f"/v1/keys/{key['id']}/usage",
                            json={"op": "increment", "value": 2**62}, expect=422)
    assert body["error"]["fields"][0]["field"] == "value"


async def test_cursors_with_non_ascii_digits_are_422(admin: Admin) -> None:
    for path in ("/v1/keys?cursor=YzrCsg", "/v1/audit?cursor=YzrCsg"):
        body = await admin.call("GET", path, expect=422)
        assert body["error"]["fields"][0]["field"] == "cursor"


async def test_provider_ids_cannot_be_enumerated_without_a_valid_key(
        admin: Admin, root: dict[str, Any]) -> None:
    from gateway import keyformat

    fake = keyformat.generate("ks_live")
    for provider in ("acme", "nobody"):
        body = await admin.call("GET", "/v1/keys", headers=as_key(fake, provider), expect=401)
        assert body["error"]["code"] == "invalid_key"


async def test_a_non_bearer_authorization_header_does_not_hide_the_api_key(
        admin: Admin, root: dict[str, Any]) -> None:
    await admin.call("GET", "/v1/keys", headers={"Authorization": "Basic Zm9vOmJhcg==",
                                                 "X-API-Key": root["key"]}, expect=200)


async def test_cascade_delete_audits_every_key(admin: Admin, org: dict[str, Any]) -> None:
    keys = [await admin.key(org["id"]) for _ in range(3)]
    await admin.call("DELETE", f"/v1/orgs/{org['id']}?cascade=true", expect=204)
    deleted = await admin.call("GET", "/v1/audit?action=key.delete", expect=200)
    assert {e["target_id"] for e in deleted["data"]} == {k["id"] for k in keys}
