"""The auth matrix of DESIGN §3 and a walk over every admin route without credentials."""

from __future__ import annotations

import re
from typing import Any

import pytest

from admin_api import console, session
from admin_api.routes import ROUTES
from gateway import keyformat
from tests.admin_api.conftest import Admin, as_key

PUBLIC = {"/openapi.json", "/healthz", "/readyz"}


async def test_every_route_but_three_requires_credentials(admin: Admin, root: dict[str, Any]
                                                          ) -> None:
    console_routes = {(method, path) for method, path, _ in console.ROUTES}
    console_routes.add(("GET", console.PATH + "/static"))
    console_routes |= {(r.method, session.API + r.path) for r in ROUTES
                       if r.path.startswith("/v1/")}  # the API again, for the console
    registered = {(r.method, r.resource.canonical) for r in admin.client.app.router.routes()
                  if r.method != "HEAD"} - console_routes  # tests/console/test_session.py
    assert registered == {(r.method, r.path) for r in ROUTES}
    for method, path in sorted(registered):
        concrete = re.sub(r"\{\w+\}", root["id"], path)
        resp = await admin.client.request(method, concrete, json={})
        if path in PUBLIC:
            assert resp.status == 200, (method, path, resp.status)
        else:
            assert resp.status == 401, (method, path, resp.status)
            assert (await resp.json())["error"]["code"] == "missing_key"
        for headers in ({"Authorization": "Bearer wrong-token"}, {"X-API-Key": "ks_live_nope"}):
            resp = await admin.client.request(method, concrete, json={}, headers=headers)
            assert (resp.status == 200) if path in PUBLIC else (resp.status == 401), (
                method, path, headers)


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Token x"])
async def test_malformed_authorization_is_401(admin: Admin, header: str) -> None:
    body = await admin.call("GET", "/v1/keys", headers={"Authorization": header}, expect=401)
    assert body["error"]["code"] == "invalid_credentials"


async def test_root_key_manages_its_own_org_only(admin: Admin, org: dict[str, Any],
                                                 root: dict[str, Any]) -> None:
    as_root = as_key(root["key"])
    other_org = await admin.org("other")
    foreign = await admin.key(other_org["id"], name="foreign")

    mine = await admin.key(headers=as_root, name="mine", scopes=["orders:read"])
    assert mine["org_id"] == org["id"] and mine["parent_id"] == root["id"]
    listed = await admin.call("GET", "/v1/keys", headers=as_root, expect=200)
    assert {k["id"] for k in listed["data"]} == {root["id"], mine["id"]}

    # Another organisation's key does not exist for this root key.
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/revoke"),
                           ("POST", "/rotate"), ("GET", "/usage")):
        kwargs = {"json": {"name": "x"}} if method == "PATCH" else {}
        body = await admin.call(method, f"/v1/keys/{foreign['id']}{suffix}", headers=as_root,
                                expect=404, **kwargs)
        assert body["error"]["code"] == "key_not_found"
    body = await admin.call("POST", "/v1/keys", json={"org_id": other_org["id"]},
                            headers=as_root, expect=403)
    assert body["error"]["code"] == "forbidden_org"
    await admin.call("GET", f"/v1/keys?org_id={other_org['id']}", headers=as_root, expect=403)
    # Organisations are the operator's.
    for method, path in (("GET", "/v1/orgs"), ("GET", f"/v1/orgs/{org['id']}"),
                         ("POST", "/v1/orgs")):
        body = await admin.call(method, path, headers=as_root, json={}, expect=403)
        assert body["error"]["code"] == "operator_required"


async def test_root_key_updates_itself_and_sub_keys_never_another_root(
        admin: Admin, org: dict[str, Any], root: dict[str, Any]) -> None:
    as_root = as_key(root["key"])
    other_root = await admin.key(org["id"], root=True, name="other root")
    sub = await admin.key(headers=as_root, name="sub")

    await admin.call("PATCH", f"/v1/keys/{root['id']}", json={"name": "me"}, headers=as_root,
                     expect=200)
    await admin.call("PATCH", f"/v1/keys/{sub['id']}", json={"name": "s"}, headers=as_root,
                     expect=200)
    await admin.call("POST", f"/v1/keys/{sub['id']}/pause", headers=as_root, expect=200)
    for method, suffix, payload in (("PATCH", "", {"name": "x"}), ("POST", "/revoke", None),
                                    ("POST", "/rotate", None), ("DELETE", "", None),
                                    ("POST", "/pause", None)):
        body = await admin.call(method, f"/v1/keys/{other_root['id']}{suffix}", json=payload,
                                headers=as_root, expect=403)
        assert body["error"]["code"] == "root_key_protected"
    # Reading another root key of the same organisation is allowed.
    await admin.call("GET", f"/v1/keys/{other_root['id']}", headers=as_root, expect=200)
    body = await admin.call("POST", "/v1/keys", json={"root": True}, headers=as_root,
                            expect=403)
    assert body["error"]["code"] == "operator_required"


async def test_sub_key_reads_only_itself(admin: Admin, root: dict[str, Any]) -> None:
    as_root = as_key(root["key"])
    sub = await admin.key(headers=as_root, name="sub", scopes=["a:read"])
    sibling = await admin.key(headers=as_root, name="sibling")
    as_sub = as_key(sub["key"])

    assert (await admin.call("GET", "/v1/keys/self", headers=as_sub, expect=200))["id"] == sub["id"]
    await admin.call("GET", f"/v1/keys/{sub['id']}", headers=as_sub, expect=200)
    await admin.call("GET", f"/v1/keys/{sub['id']}/usage", headers=as_sub, expect=200)
    await admin.call("GET", f"/v1/keys/{sibling['id']}", headers=as_sub, expect=404)
    own = f"/v1/keys/{sub['id']}"
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("PATCH", own),
                         ("POST", f"{own}/revoke"), ("POST", "/v1/verify"), ("GET", "/v1/audit")):
        body = await admin.call(method, path, headers=as_sub, json={"key": "x", "name": "n"},
                                expect=403)
        assert body["error"]["code"] == "root_key_required", (method, path)


async def test_scopes_granted_must_be_held_by_the_granting_key(admin: Admin, org: dict[str, Any]
                                                               ) -> None:
    narrow_root = await admin.key(org["id"], root=True, scopes=["orders:*", "products:read"])
    as_root = as_key(narrow_root["key"])
    ok = await admin.key(headers=as_root, scopes=["orders:read", "orders:*", "products:read"])
    assert ok["scopes"] == ["orders:read", "orders:*", "products:read"]
    body = await admin.call("POST", "/v1/keys", json={"scopes": ["products:write", "*"]},
                            headers=as_root, expect=403)
    assert body["error"]["code"] == "insufficient_scope"
    assert "products:write" in body["error"]["message"]
    await admin.call("PATCH", f"/v1/keys/{ok['id']}", json={"scopes": ["inventory:read"]},
                     headers=as_root, expect=403)
    # The root key cannot widen its own scopes either.
    await admin.call("PATCH", f"/v1/keys/{narrow_root['id']}", json={"scopes": ["*"]},
                     headers=as_root, expect=403)
    # The operator is not limited.
    await admin.call("PATCH", f"/v1/keys/{ok['id']}", json={"scopes": ["*"]}, expect=200)


async def test_key_states_and_provider_header(admin: Admin, org: dict[str, Any],
                                              root: dict[str, Any]) -> None:
    await admin.org("other")
    as_root = as_key(root["key"], provider="acme")
    await admin.call("GET", "/v1/keys", headers=as_root, expect=200)
    body = await admin.call("GET", "/v1/keys", headers=as_key(root["key"], "nobody"), expect=400)
    assert body["error"]["code"] == "invalid_provider"
    body = await admin.call("GET", "/v1/keys", headers=as_key(root["key"], "other"), expect=401)
    assert body["error"]["code"] == "invalid_key"

    await admin.call("POST", f"/v1/keys/{root['id']}/pause", expect=200)
    body = await admin.call("GET", "/v1/keys", headers=as_root, expect=403)
    assert body["error"]["code"] == "key_paused"
    await admin.call("POST", f"/v1/keys/{root['id']}/resume", expect=200)
    await admin.db.execute("UPDATE keys SET expires_at = now() WHERE id = $1", root["id"])
    body = await admin.call("GET", "/v1/keys", headers=as_root, expect=401)
    assert body["error"]["code"] == "key_expired"
    await admin.call("POST", f"/v1/keys/{root['id']}/revoke", expect=200)
    body = await admin.call("GET", "/v1/keys", headers=as_root, expect=401)
    assert body["error"]["code"] == "key_revoked"


async def test_unknown_and_malformed_keys_get_identical_answers(admin: Admin, root: dict[str, Any]
                                                                ) -> None:
    altered = root["key"][:-7] + ("A" if root["key"][-7] != "A" else "B") + root["key"][-6:]
    # Well-formed (valid checksum, the root key's own prefix) but never issued: it is looked
    # up in the store, the others are refused before — a client must not tell them apart.
    unknown = keyformat.generate(root["key"][: root["key"].rindex("_")])
    assert keyformat.is_well_formed(unknown) and not keyformat.is_well_formed(altered)
    bodies = []
    for raw in ("garbage", altered, "ks_live_" + "0" * 36, unknown):
        body = await admin.call("GET", "/v1/keys", headers=as_key(raw), expect=401)
        body["error"].pop("request_id")
        bodies.append(body)
    assert bodies[0] == bodies[1] == bodies[2] == bodies[3]
    assert root["key"] not in str(bodies)
