"""Every list and string a client sends has a cap (admin_api/caps.py); going over it is a
422 ``validation_failed`` (400 in the dialects) whose message states the limit."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from admin_api import caps
from tests.admin_api.conftest import Admin
from tests.dialects import conftest as dialects
from tests.gateway.conftest import Upstream, upstream  # noqa: F401

LIMIT = {"limit": 10, "window_s": 60}
TOO_MANY_SCOPES = [f"s:{i}" for i in range(caps.MAX_SCOPES + 1)]
TOO_MANY_LIMITS = [{"limit": 10 + i, "window_s": 60} for i in range(caps.MAX_RATE_LIMITS + 1)]

# The dialect fixtures, used here too.
dialect_admin = dialects.dialect_admin
dialect_gateway = dialects.dialect_gateway
dialect_settings = dialects.dialect_settings
tenant = dialects.tenant


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def refused(admin: Admin, method: str, path: str, limit: int, field: str,
                  **kwargs: Any) -> None:
    body = await admin.call(method, path, expect=422, **kwargs)
    assert body["error"]["code"] == "validation_failed", body
    assert str(limit) in body["error"]["message"], body
    assert any(f["field"].startswith(field) for f in body["error"]["fields"]), body


@pytest.mark.parametrize(("fields", "limit", "field"), [
    ({"scopes": TOO_MANY_SCOPES}, caps.MAX_SCOPES, "scopes"),
    ({"scopes": ["a:" + "b" * caps.MAX_SCOPE_LEN]}, caps.MAX_SCOPE_LEN, "scopes.0"),
    ({"rate_limits": TOO_MANY_LIMITS}, caps.MAX_RATE_LIMITS, "rate_limits"),
    ({"metadata": {"blob": "x" * caps.MAX_METADATA_BYTES}}, caps.MAX_METADATA_BYTES,
     "metadata"),
    ({"metadata": nested(caps.MAX_METADATA_DEPTH + 1)}, caps.MAX_METADATA_DEPTH, "metadata"),
    ({"name": "n" * (caps.MAX_NAME_LEN + 1)}, caps.MAX_NAME_LEN, "name"),
    ({"owner_id": "o" * (caps.MAX_ID_LEN + 1)}, caps.MAX_ID_LEN, "owner_id"),
    ({"prefix": "p" * (caps.MAX_KEY_PREFIX_LEN + 1)}, caps.MAX_KEY_PREFIX_LEN, "prefix"),
])
async def test_key_create_and_update_over_a_cap_are_refused(
        admin: Admin, org: dict[str, Any], fields: dict[str, Any], limit: int,
        field: str) -> None:
    await refused(admin, "POST", "/v1/keys", limit, field, json={"org_id": org["id"], **fields})
    if "prefix" not in fields:
        key = await admin.key(org["id"])
        await refused(admin, "PATCH", f"/v1/keys/{key['id']}", limit, field, json=fields)


async def test_a_key_at_every_cap_is_accepted_and_its_scopes_header_fits(
        dialect_admin: Admin, tenant: dict[str, Any], dialect_gateway: TestClient,
        upstream: Upstream) -> None:  # noqa: F811
    scopes = [f"{i:02d}:" + "s" * (caps.MAX_SCOPE_LEN - 3) for i in range(caps.MAX_SCOPES)]
    metadata = {"blob": "x" * (caps.MAX_METADATA_BYTES - len('{"blob":""}'))}
    key = await dialect_admin.key(
        tenant["org"]["id"], scopes=scopes, metadata=metadata, name="n" * caps.MAX_NAME_LEN,
        rate_limits=[{"limit": 1000 + i, "window_s": 60} for i in range(caps.MAX_RATE_LIMITS)])
    resp = await dialect_gateway.get("/scrubbe/x", headers={"X-API-Key": key["key"]})
    assert resp.status == 200
    header = upstream.seen[-1]["headers"]["X-Keystile-Scopes"]
    assert header == " ".join(scopes)
    assert len(header.encode()) == caps.MAX_SCOPES_HEADER_BYTES < 8 * 1024


async def test_org_owner_and_verify_lists_are_capped(admin: Admin, org: dict[str, Any]) -> None:
    await refused(admin, "POST", "/v1/orgs", caps.MAX_RATE_LIMITS, "rate_limits",
                  json={"name": "b", "provider_id": "b", "rate_limits": TOO_MANY_LIMITS})
    await refused(admin, "POST", "/v1/orgs", caps.MAX_NAME_LEN, "name",
                  json={"name": "b" * (caps.MAX_NAME_LEN + 1), "provider_id": "b"})
    await refused(admin, "POST", "/v1/orgs", caps.MAX_PROVIDER_ID_LEN, "provider_id",
                  json={"name": "b", "provider_id": "b" * (caps.MAX_PROVIDER_ID_LEN + 1)})
    for defaults, field in (({"scopes": TOO_MANY_SCOPES}, "key_defaults.scopes"),
                            ({"rate_limits": TOO_MANY_LIMITS}, "key_defaults.rate_limits")):
        limit = caps.MAX_SCOPES if "scopes" in defaults else caps.MAX_RATE_LIMITS
        await refused(admin, "PATCH", f"/v1/orgs/{org['id']}", limit, field,
                      json={"key_defaults": defaults})
    await refused(admin, "PATCH", f"/v1/orgs/{org['id']}", caps.MAX_METADATA_BYTES, "metadata",
                  json={"metadata": {"blob": "x" * caps.MAX_METADATA_BYTES}})
    await refused(admin, "PUT", f"/v1/orgs/{org['id']}/owners/o/limits",
                  caps.MAX_RATE_LIMITS, "rate_limits", json={"rate_limits": TOO_MANY_LIMITS})
    long_owner = "o" * (caps.MAX_ID_LEN + 1)
    body = await admin.call("PUT", f"/v1/orgs/{org['id']}/owners/{long_owner}/limits",
                            json={"rate_limits": [LIMIT]}, expect=422)
    assert str(caps.MAX_ID_LEN) in body["error"]["message"]
    await refused(admin, "POST", "/v1/verify", caps.MAX_SCOPES, "scopes",
                  json={"key": "ks_live_x", "scopes": TOO_MANY_SCOPES})
    await refused(admin, "GET", f"/v1/keys?owner_id={long_owner}", caps.MAX_ID_LEN, "owner_id")
    await refused(admin, "GET", "/v1/orgs?cursor=" + "c" * (caps.MAX_CURSOR_LEN + 1),
                  caps.MAX_CURSOR_LEN, "cursor")


async def test_dialects_refuse_over_a_cap_with_400(dialect_admin: Admin,
                                                   tenant: dict[str, Any]) -> None:
    root = tenant["root"]["key"]
    # The limit in the message where the dialect's contract lets us word it (Scrubs answers
    # every invalid body with its seed's one sentence).
    cases = [
        ("POST", "/api/v1/apikey/createapikey", {"Authorization": f"Bearer {root}"},
         {"name": "s", "environment": "PRODUCTION", "scopes": TOO_MANY_SCOPES},
         str(caps.MAX_SCOPES)),
        ("POST", "/api/v1/api-keys", {"X-API-Key": root},
         {"name": "n" * (caps.MAX_NAME_LEN + 1), "scopes": ["orders:read"]},
         str(caps.MAX_NAME_LEN)),
        ("POST", "/api/v1/api-key", {"X-Scrubs-Clinic-Api-Key": root,
                                     "X-Scrubs-Clinic-Provider": "tenant"},
         {"clinic_id": "c" * (caps.MAX_ID_LEN + 1), "friendly_name": "f"}, "invalid"),
        ("PUT", "/apikeys", {"Authorization": f"ODFHIR tenant/{root}"},
         {"CustomerKey": "ABCDEFGHIJKLMNOP", "DevRefId": "d" * (caps.MAX_ID_LEN + 1)},
         str(caps.MAX_ID_LEN)),
    ]
    for method, path, headers, payload, said in cases:
        resp = await dialect_admin.client.request(method, path, headers=headers, json=payload)
        text = await resp.text()
        assert resp.status == 400 and said in text, (path, resp.status, text)


async def test_an_organisation_stored_before_the_caps_stays_readable_and_usable(
        admin: Admin, org: dict[str, Any], db: Any) -> None:
    """Rows written before the caps existed may exceed them: reading the organisation, and
    creating a key from its defaults, must still work (no 500)."""
    await db.execute("UPDATE orgs SET key_defaults = $2 WHERE id = $1", org["id"],
                     {"scopes": TOO_MANY_SCOPES, "rate_limits": TOO_MANY_LIMITS})
    read = await admin.call("GET", f"/v1/orgs/{org['id']}", expect=200)
    assert read["key_defaults"]["scopes"] == TOO_MANY_SCOPES
    created = await admin.call("POST", "/v1/keys", expect=201, json={"org_id": org["id"]})
    assert len(created["rate_limits"]) == caps.MAX_RATE_LIMITS + 1
