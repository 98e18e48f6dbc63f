from __future__ import annotations

from tests.admin_api.conftest import Admin


async def test_create_read_list_update_delete(admin: Admin) -> None:
    created = await admin.org("acme", key_prefix="acme_live",
                              key_defaults={"scopes": ["orders:read"], "usage_limit": 5})
    assert created["id"].startswith("org_")
    assert created["provider_id"] == "acme"
    assert created["key_defaults"]["usage_limit"] == 5

    got = await admin.call("GET", f"/v1/orgs/{created['id']}", expect=200)
    assert got == created

    listed = await admin.call("GET", "/v1/orgs", expect=200)
    assert [o["id"] for o in listed["data"]] == [created["id"]]

    patched = await admin.call("PATCH", f"/v1/orgs/{created['id']}",
                               json={"name": "Acme Ltd"}, expect=200)
    assert patched["name"] == "Acme Ltd" and patched["provider_id"] == "acme"

    await admin.call("DELETE", f"/v1/orgs/{created['id']}", expect=204)
    await admin.call("GET", f"/v1/orgs/{created['id']}", expect=404)
    assert await admin.db.fetchval("SELECT count(*) FROM orgs") == 0


async def test_duplicate_provider_id_is_409(admin: Admin) -> None:
    await admin.org("acme")
    body = await admin.call("POST", "/v1/orgs", json={"name": "x", "provider_id": "acme"},
                            expect=409)
    assert body["error"]["code"] == "provider_id_taken"
    other = await admin.org("other")
    body = await admin.call("PATCH", f"/v1/orgs/{other['id']}", json={"provider_id": "acme"},
                            expect=409)
    assert body["error"]["code"] == "provider_id_taken"


async def test_org_with_keys_needs_cascade_to_delete(admin: Admin) -> None:
    org = await admin.org("acme")
    await admin.key(org["id"], name="k")
    body = await admin.call("DELETE", f"/v1/orgs/{org['id']}", expect=409)
    assert body["error"]["code"] == "org_has_keys" and "cascade=true" in body["error"]["message"]
    await admin.call("DELETE", f"/v1/orgs/{org['id']}?cascade=true", expect=204)
    assert await admin.db.fetchval("SELECT count(*) FROM keys") == 0


async def test_org_validation_names_fields(admin: Admin) -> None:
    body = await admin.call("POST", "/v1/orgs", json={"name": "", "provider_id": "bad id!",
                                                      "key_prefix": "Bad-Prefix"}, expect=422)
    fields = {f["field"] for f in body["error"]["fields"]}
    assert fields == {"name", "provider_id", "key_prefix"}
    org = await admin.org("acme")
    body = await admin.call("PATCH", f"/v1/orgs/{org['id']}", json={"name": None}, expect=422)
    assert "name" in body["error"]["message"]
    body = await admin.call("PATCH", f"/v1/orgs/{org['id']}", json={}, expect=422)
    assert "at least one field" in body["error"]["message"]


async def test_org_pagination(admin: Admin) -> None:
    ids = {(await admin.org(f"p{i}"))["id"] for i in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await admin.call("GET", f"/v1/orgs{query}", expect=200)
        seen += [o["id"] for o in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


async def test_unknown_org_is_404(admin: Admin) -> None:
    body = await admin.call("GET", "/v1/orgs/org_nope", expect=404)
    assert body["error"]["code"] == "org_not_found"
    await admin.call("PATCH", "/v1/orgs/org_nope", json={"name": "x"}, expect=404)
    await admin.call("DELETE", "/v1/orgs/org_nope", expect=404)


async def test_shared_rate_limits_for_an_organisation_and_an_owner(admin: Admin) -> None:
    from tests.admin_api.conftest import as_key

    org = await admin.org("acme", rate_limits=[{"limit": 100, "window_s": 60}])
    assert org["rate_limits"] == [{"limit": 100, "window_s": 60}]
    root = await admin.key(org["id"], root=True, scopes=["*"])
    path = f"/v1/orgs/{org['id']}/owners/clinic-1/limits"
    assert (await admin.call("GET", path, expect=200))["rate_limits"] == []
    body = await admin.call("PUT", path, json={"rate_limits": [{"limit": 5, "window_s": 1}]},
                            headers=as_key(root["key"]), expect=200)
    assert body == {"org_id": org["id"], "owner_id": "clinic-1",
                    "rate_limits": [{"limit": 5, "window_s": 1}]}
    assert await admin.db.fetchval(
        "SELECT rate_limits FROM owner_limits WHERE owner_id = 'clinic-1'") == [
            {"limit": 5, "window_s": 1}]
    other = await admin.org("other")
    await admin.call("GET", f"/v1/orgs/{other['id']}/owners/clinic-1/limits",
                     headers=as_key(root["key"]), expect=403)
    await admin.call("PUT", path, json={"rate_limits": [{"limit": 0, "window_s": 1}]},
                     expect=422)
    await admin.call("DELETE", path, expect=204)
    await admin.call("DELETE", path, expect=404)
    patched = await admin.call("PATCH", f"/v1/orgs/{org['id']}", json={"rate_limits": []},
                               expect=200)
    assert patched["rate_limits"] == []
