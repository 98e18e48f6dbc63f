from __future__ import annotations

import hashlib
from typing import Any

from tests.admin_api.conftest import Admin, as_key


async def test_create_returns_raw_key_once_and_stores_only_its_hash(
        admin: Admin, org: dict[str, Any]) -> None:
    created = await admin.key(org["id"], name="clinic", owner_id="clinic-1",
                              scopes=["orders:read"], usage_limit=10,
                              quota={"limit": 100, "period": "day"},
                              rate_limits=[{"limit": 5, "window_s": 1}], metadata={"a": 1})
    raw = created["key"]
    assert raw.startswith("ks_live_") and created["prefix"] == raw[:12]  # ks_live_ + 4
    assert created["status"] == "active" and created["environment"] == "production"
    assert created["usage_limit"] == 10 and created["quota"] == {"limit": 100, "period": "day"}

    stored = await admin.db.fetchrow("SELECT hash FROM key_secrets WHERE key_id = $1",
                                     created["id"])
    assert bytes(stored["hash"]) == hashlib.sha256(raw.encode()).digest()
    dump = await admin.db.fetchval("SELECT string_agg(t::text, ' ') FROM keys t")
    assert raw not in dump

    got = await admin.call("GET", f"/v1/keys/{created['id']}", expect=200)
    assert "key" not in got
    listed = await admin.call("GET", "/v1/keys", expect=200)
    assert all("key" not in k for k in listed["data"])
    assert {k for k in got} == {k for k in created} - {"key"}


async def test_org_defaults_and_prefix_override(admin: Admin) -> None:
    org = await admin.org("nux", key_prefix="nux_live",
                          key_defaults={"scopes": ["notes:write"], "usage_limit": 5,
                                        "environment": "staging", "expires_in_s": 3600})
    key = await admin.key(org["id"])
    assert key["key"].startswith("nux_live_")
    assert key["scopes"] == ["notes:write"] and key["usage_limit"] == 5
    assert key["environment"] == "staging" and key["expires_at"] is not None
    explicit = await admin.key(org["id"], prefix="rg", usage_limit=None, scopes=[])
    assert explicit["key"].startswith("rg_") and explicit["usage_limit"] is None
    assert explicit["scopes"] == []


async def test_get_self_returns_the_callers_record(admin: Admin, root: dict[str, Any]) -> None:
    sub = await admin.key(headers=as_key(root["key"]), name="sub", scopes=["a:b"])
    me = await admin.call("GET", "/v1/keys/self", headers=as_key(sub["key"]), expect=200)
    assert me["id"] == sub["id"] and me["parent_id"] == root["id"]
    body = await admin.call("GET", "/v1/keys/self", expect=400)
    assert body["error"]["code"] == "no_key_identity"


async def test_patch_changes_only_what_is_sent_and_null_clears(
        admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], name="a", owner_id="o", usage_limit=3,
                          expires_at="2099-01-01T00:00:00Z", scopes=["x:y"])
    patched = await admin.call("PATCH", f"/v1/keys/{key['id']}", json={
        "name": "b", "usage_limit": None, "expires_at": None,
        "rate_limits": [{"limit": 2, "window_s": 60}], "metadata": {"tier": "gold"}},
        expect=200)
    assert patched["name"] == "b" and patched["usage_limit"] is None
    assert patched["expires_at"] is None and patched["scopes"] == ["x:y"]
    assert patched["rate_limits"] == [{"limit": 2, "window_s": 60}]
    assert patched["metadata"] == {"tier": "gold"} and patched["owner_id"] == "o"
    row = await admin.db.fetchrow("SELECT name, usage_limit FROM keys WHERE id = $1", key["id"])
    assert row["name"] == "b" and row["usage_limit"] is None


async def test_patch_rejects_null_for_required_fields_and_empty_bodies(
        admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"])
    body = await admin.call("PATCH", f"/v1/keys/{key['id']}", json={"scopes": None},
                            expect=422)
    assert "scopes" in body["error"]["message"]
    await admin.call("PATCH", f"/v1/keys/{key['id']}", json={}, expect=422)


async def test_delete_removes_the_record_and_its_secret(admin: Admin, org: dict[str, Any]
                                                        ) -> None:
    key = await admin.key(org["id"])
    await admin.call("DELETE", f"/v1/keys/{key['id']}", expect=204)
    await admin.call("GET", f"/v1/keys/{key['id']}", expect=404)
    assert await admin.db.fetchval("SELECT count(*) FROM key_secrets") == 0
    await admin.call("DELETE", f"/v1/keys/{key['id']}", expect=404)


async def test_revoke_is_irreversible_pause_resume_are_not(admin: Admin, org: dict[str, Any]
                                                           ) -> None:
    key = await admin.key(org["id"])
    path = f"/v1/keys/{key['id']}"
    assert (await admin.call("POST", f"{path}/pause", expect=200))["status"] == "paused"
    assert (await admin.call("POST", f"{path}/pause", expect=200))["status"] == "paused"
    assert (await admin.call("POST", f"{path}/resume", expect=200))["status"] == "active"
    revoked = await admin.call("POST", f"{path}/revoke", expect=200)
    assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None
    for action in ("resume", "pause", "rotate"):
        body = await admin.call("POST", f"{path}/{action}", expect=409)
        assert body["error"]["code"] == "key_revoked"
    assert (await admin.call("POST", f"{path}/revoke", expect=200))["status"] == "revoked"
    # The record stays after revocation.
    assert (await admin.call("GET", path, expect=200))["status"] == "revoked"


async def test_expired_is_derived_from_expires_at(admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"])
    await admin.db.execute("UPDATE keys SET expires_at = now() - interval '1 second' "
                           "WHERE id = $1", key["id"])
    assert (await admin.call("GET", f"/v1/keys/{key['id']}", expect=200))["status"] == "expired"
    listed = await admin.call("GET", "/v1/keys?status=expired", expect=200)
    assert [k["id"] for k in listed["data"]] == [key["id"]]
    assert (await admin.call("GET", "/v1/keys?status=active", expect=200))["data"] == []


async def test_list_filters(admin: Admin, org: dict[str, Any]) -> None:
    a = await admin.key(org["id"], owner_id="alice", environment="staging")
    b = await admin.key(org["id"], owner_id="bob", root=True)
    c = await admin.key(org["id"], owner_id="alice")
    await admin.call("POST", f"/v1/keys/{c['id']}/pause", expect=200)

    async def ids(query: str) -> list[str]:
        return [k["id"] for k in (await admin.call("GET", f"/v1/keys?{query}",
                                                   expect=200))["data"]]

    assert await ids("owner_id=alice") == [a["id"], c["id"]]
    assert await ids("environment=staging") == [a["id"]]
    assert await ids("root=true") == [b["id"]]
    assert await ids("status=paused") == [c["id"]]
    assert await ids("status=active&root=false") == [a["id"]]
    assert await ids(f"org_id={org['id']}&limit=1") == [a["id"]]
    body = await admin.call("GET", "/v1/keys?status=gone", expect=422)
    assert body["error"]["fields"][0]["field"] == "status"


async def test_search_finds_keys_by_name_owner_prefix_or_id(admin: Admin, org: dict[str, Any]
                                                            ) -> None:
    billing = await admin.key(org["id"], name="Billing export", owner_id="alice")
    other = await admin.key(org["id"], name="search%_literal", owner_id="Bob-Team")

    async def found(text: str) -> list[str]:
        listed = await admin.call("GET", "/v1/keys", params={"search": text}, expect=200)
        return [k["id"] for k in listed["data"]]

    assert await found("billing") == [billing["id"]]
    assert await found("bob-team") == [other["id"]]
    assert await found("%_") == [other["id"]]  # no wildcards: the text itself
    assert await found(other["prefix"]) == [other["id"]]
    assert await found(billing["id"]) == [billing["id"]]
    assert await found("nobody") == []


async def test_default_switch_unsets_previous_default(admin: Admin, org: dict[str, Any]
                                                      ) -> None:
    first = await admin.key(org["id"], owner_id="clinic", is_default=True)
    second = await admin.key(org["id"], owner_id="clinic")
    other_owner = await admin.key(org["id"], owner_id="elsewhere", is_default=True)
    assert first["is_default"] is True

    switched = await admin.call("PUT", f"/v1/keys/{second['id']}/default", expect=200)
    assert switched["is_default"] is True
    defaults = await admin.db.fetch(
        "SELECT id FROM keys WHERE is_default ORDER BY serial")
    assert [r["id"] for r in defaults] == [second["id"], other_owner["id"]]

    unset = await admin.call("DELETE", f"/v1/keys/{second['id']}/default", expect=200)
    assert unset["is_default"] is False
    assert await admin.db.fetchval("SELECT count(*) FROM keys WHERE is_default "
                                   "AND owner_id = 'clinic'") == 0


async def test_default_needs_an_owner_and_a_live_key(admin: Admin, org: dict[str, Any]) -> None:
    ownerless = await admin.key(org["id"])
    body = await admin.call("PUT", f"/v1/keys/{ownerless['id']}/default", expect=409)
    assert body["error"]["code"] == "key_has_no_owner"
    body = await admin.call("POST", "/v1/keys", json={"org_id": org["id"], "is_default": True},
                            expect=422)
    assert "owner_id" in body["error"]["message"]
    key = await admin.key(org["id"], owner_id="o", is_default=True)
    revoked = await admin.call("POST", f"/v1/keys/{key['id']}/revoke", expect=200)
    assert revoked["is_default"] is False


async def test_create_validation(admin: Admin, org: dict[str, Any]) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"scopes": ["no-colon"]}, "scopes.0"),
        ({"environment": "prod"}, "environment"),
        ({"usage_limit": -1}, "usage_limit"),
        ({"usage_limit": "5"}, "usage_limit"),
        ({"quota": {"limit": 10, "period": "year"}}, "quota.period"),
        ({"rate_limits": [{"limit": 0, "window_s": 1}]}, "rate_limits.0.limit"),
        ({"expires_at": "2099-01-01T00:00:00"}, "expires_at"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"prefix": "Bad"}, "prefix"),
        ({"surprise": 1}, "surprise"),
    ]
    for payload, field in cases:
        body = await admin.call("POST", "/v1/keys", json={"org_id": org["id"], **payload},
                                expect=422)
        assert field in body["error"]["message"], (payload, body)
    body = await admin.call("POST", "/v1/keys", json={"name": "x"}, expect=422)
    assert "org_id" in body["error"]["message"]
    body = await admin.call("POST", "/v1/keys", json={"org_id": "org_missing"}, expect=404)
    assert body["error"]["code"] == "org_not_found"


async def test_a_malformed_scope_is_explained_not_matched_against_a_pattern(
        admin: Admin, org: dict[str, Any]) -> None:
    body = await admin.call("POST", "/v1/keys", json={"org_id": org["id"],
                                                      "scopes": ["echo:read", "bogus scope!"]},
                            expect=422)
    assert body["error"]["fields"] == [{"field": "scopes.1", "message": (
        "a scope is resource:action (letters, digits, '_', '.', '-'), resource:* or *, "
        "e.g. echo:read")}]
