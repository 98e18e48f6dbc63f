from __future__ import annotations

from typing import Any

from tests.admin_api.conftest import OPERATOR, Admin, as_key


async def test_every_mutation_is_audited(admin: Admin) -> None:
    org = await admin.org("acme")
    root = await admin.key(org["id"], root=True, scopes=["*"])
    key = await admin.key(headers=as_key(root["key"]), owner_id="o")
    path = f"/v1/keys/{key['id']}"
    await admin.call("PATCH", path, json={"name": "renamed"}, expect=200)
    await admin.call("POST", f"{path}/pause", expect=200)
    await admin.call("POST", f"{path}/resume", expect=200)
    await admin.call("POST", f"{path}/rotate", json={"grace_seconds": 5}, expect=200)
    await admin.call("PUT", f"{path}/default", expect=200)
    await admin.call("DELETE", f"{path}/default", expect=200)
    await admin.call("POST", f"{path}/usage", json={"op": "set", "value": 2}, expect=200)
    await admin.call("POST", f"{path}/revoke", expect=200)
    await admin.call("DELETE", path, expect=204)
    await admin.call("PATCH", f"/v1/orgs/{org['id']}", json={"name": "n"}, expect=200)

    entries = (await admin.call("GET", "/v1/audit", expect=200))["data"]
    actions = [e["action"] for e in reversed(entries)]
    assert actions == ["org.create", "key.create", "key.create", "key.update", "key.pause",
                       "key.resume", "key.rotate", "key.set_default", "key.unset_default",
                       "key.usage", "key.revoke", "key.delete", "org.update"]
    by_root = [e for e in entries if e["actor_type"] == "key"]
    assert [e["actor_id"] for e in by_root] == [root["id"]]
    update = next(e for e in entries if e["action"] == "key.update")
    assert update["changes"] == {"name": "renamed"} and update["target_id"] == key["id"]
    assert update["actor_type"] == "operator" and update["request_id"]
    # No secret in the trail.
    trail = str(entries)
    assert root["key"] not in trail and key["key"] not in trail

    only_key = await admin.call("GET", f"/v1/audit?target_id={key['id']}&action=key.pause",
                                expect=200)
    assert [e["action"] for e in only_key["data"]] == ["key.pause"]


async def test_audit_request_id_matches_response_header(admin: Admin, org: dict[str, Any]
                                                        ) -> None:
    resp = await admin.client.post("/v1/keys", json={"org_id": org["id"]},
                                   headers={**OPERATOR, "X-Request-Id": "trace-123"})
    assert resp.status == 201 and resp.headers["X-Request-Id"] == "trace-123"
    entry = (await admin.call("GET", "/v1/audit?action=key.create", expect=200))["data"][0]
    assert entry["request_id"] == "trace-123"


async def test_root_key_sees_only_its_organisations_trail(admin: Admin, org: dict[str, Any],
                                                          root: dict[str, Any]) -> None:
    other = await admin.org("other")
    await admin.key(other["id"])
    entries = (await admin.call("GET", "/v1/audit", headers=as_key(root["key"]),
                                expect=200))["data"]
    assert entries and {e["org_id"] for e in entries} == {org["id"]}


async def test_audit_pagination(admin: Admin, org: dict[str, Any]) -> None:
    for _ in range(5):
        await admin.key(org["id"])
    first = await admin.call("GET", "/v1/audit?limit=4", expect=200)
    second = await admin.call("GET", f"/v1/audit?limit=4&cursor={first['next_cursor']}",
                              expect=200)
    ids = [e["id"] for e in first["data"] + second["data"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 6
    assert second["next_cursor"] is None
    body = await admin.call("GET", "/v1/audit?cursor=not-a-cursor", expect=422)
    assert body["error"]["fields"][0]["field"] == "cursor"
