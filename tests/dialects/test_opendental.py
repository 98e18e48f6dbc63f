"""Open Dental conformance: /apikeys GET / POST / PUT with ODFHIR auth, CustomerKeys listed in
clear from their encrypted copy, the seed's fields and placeholder dates; then the key at the
gateway with `Authorization: ODFHIR {DeveloperKey}/{CustomerKey}`."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin
from tests.gateway.conftest import Upstream

FIELDS = {"CustomerKey", "KeyStatus", "DateCreated", "DateDisabled", "DateTimeAssigned",
          "DevRefId"}


def odfhir(developer: str, key: str) -> dict[str, str]:
    return {"Authorization": f"ODFHIR {developer}/{key}"}


async def test_documented_flow(dialect_admin: Admin, tenant: dict[str, Any],
                               dialect_gateway: TestClient, upstream: Upstream) -> None:
    auth = odfhir("tenant", tenant["root"]["key"])
    created = await dialect_admin.call("POST", "/apikeys", headers=auth, expect=201)
    assert set(created) == FIELDS
    assert re.fullmatch(r"[A-Z0-9]{16}", created["CustomerKey"])
    assert created["KeyStatus"] == "Enabled" and created["DevRefId"] == ""
    assert created["DateDisabled"] == "0001-01-01"
    assert created["DateTimeAssigned"] == "0001-01-01 00:00:00"
    customer = created["CustomerKey"]
    # Stored encrypted, never in clear.
    stored = await dialect_admin.db.fetchval(
        "SELECT secret_ciphertext FROM keys WHERE recoverable")
    assert stored is not None and customer.encode() not in bytes(stored)

    listed = await dialect_admin.call("GET", "/apikeys", headers=auth, expect=200)
    assert [k["CustomerKey"] for k in listed] == [customer]  # in clear, as documented

    # Through the gateway: ODFHIR {DeveloperKey}/{CustomerKey}.
    resp = await dialect_gateway.get("/opendental/patients",
                                     headers=odfhir("tenant", customer))
    assert resp.status == 200
    assert "Authorization" not in upstream.seen[-1]["headers"]
    # DateTimeAssigned is the first use through the gateway, once usage is written behind.
    for _ in range(200):
        listed = await dialect_admin.call("GET", "/apikeys", headers=auth, expect=200)
        if listed[0]["DateTimeAssigned"] != "0001-01-01 00:00:00":
            break
        await asyncio.sleep(0.05)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", listed[0]["DateTimeAssigned"])
    resp = await dialect_gateway.get("/opendental/patients",
                                     headers=odfhir("wrong-developer", customer))
    assert resp.status == 400
    resp = await dialect_gateway.get("/opendental/patients",
                                     headers=odfhir("tenant", "NOTAKEY"))
    assert resp.status == 401

    disabled = await dialect_admin.call("PUT", "/apikeys", headers=auth, json={
        "CustomerKey": customer, "KeyStatus": "DisabledByDeveloper",
        "DevRefId": "Sarah's Super Dental"}, expect=200)
    assert disabled["KeyStatus"] == "DisabledByDeveloper"
    assert disabled["DevRefId"] == "Sarah's Super Dental"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", disabled["DateDisabled"])
    assert disabled["DateDisabled"] != "0001-01-01"
    deadline_ok = False
    for _ in range(100):  # the change reaches the gateway through the invalidation channel
        resp = await dialect_gateway.get("/opendental/patients",
                                         headers=odfhir("tenant", customer))
        if resp.status == 403:
            deadline_ok = True
            break
        await asyncio.sleep(0.01)
    assert deadline_ok, "a disabled key must be refused"

    enabled = await dialect_admin.call("PUT", "/apikeys", headers=auth, json={
        "CustomerKey": customer, "KeyStatus": "Enabled"}, expect=200)
    assert enabled["KeyStatus"] == "Enabled" and enabled["DateDisabled"] == "0001-01-01"


async def test_errors(dialect_admin: Admin, tenant: dict[str, Any]) -> None:
    auth = odfhir("tenant", tenant["root"]["key"])
    for headers in ({}, {"Authorization": "Bearer x"}, odfhir("tenant", "nonsense"),
                    odfhir("nobody", tenant["root"]["key"])):
        body = await dialect_admin.call("GET", "/apikeys", headers=headers, expect=401)
        assert body["error"].startswith("Unauthorized")
    body = await dialect_admin.call("PUT", "/apikeys", headers=auth, json={}, expect=400)
    assert "CustomerKey" in body["error"]
    await dialect_admin.call("PUT", "/apikeys", headers=auth,
                             json={"CustomerKey": "lowercase"}, expect=400)
    await dialect_admin.call("PUT", "/apikeys", headers=auth,
                             json={"CustomerKey": "AAAAAAAAAAAAAAAA"}, expect=404)
    await dialect_admin.call("PUT", "/apikeys", headers=auth,
                             json={"CustomerKey": "AAAAAAAAAAAAAAAA", "KeyStatus": "Off"},
                             expect=400)


async def test_only_customer_keys_are_revealed(dialect_admin: Admin, tenant: dict[str, Any]
                                               ) -> None:
    narrow = await dialect_admin.key(tenant["org"]["id"], root=True, scopes=["echo:read"])
    wide = await dialect_admin.key(tenant["org"]["id"], scopes=["*"], recoverable=True)
    listed = await dialect_admin.call("GET", "/apikeys",
                                      headers=odfhir("tenant", narrow["key"]), expect=200)
    assert wide["key"] not in str(listed)
    customer = await dialect_admin.call("POST", "/apikeys",
                                        headers=odfhir("tenant", narrow["key"]), expect=201)
    # ...and the canonical key is not a CustomerKey to this dialect.
    listed = await dialect_admin.call("GET", "/apikeys",
                                      headers=odfhir("tenant", narrow["key"]), expect=200)
    assert [k["CustomerKey"] for k in listed] == [customer["CustomerKey"]]
    await dialect_admin.call("PUT", "/apikeys", headers=odfhir("tenant", narrow["key"]),
                             json={"CustomerKey": customer["CustomerKey"], "DevRefId": "\u0000"},
                             expect=400)


async def test_odfhir_scheme_is_case_insensitive_and_asked_for_in_its_format(
        dialect_admin: Admin, tenant: dict[str, Any], dialect_gateway: TestClient,
        upstream: Upstream) -> None:
    root = tenant["root"]["key"]
    for scheme in ("odfhir", "OdFhIr"):
        created = await dialect_admin.call("POST", "/apikeys", headers={
            "Authorization": f"{scheme} tenant/{root}"}, expect=201)
        resp = await dialect_gateway.get("/opendental/patients", headers={
            "Authorization": f"{scheme} tenant/{created['CustomerKey']}"})
        assert resp.status == 200, await resp.text()
    # No credential at the gateway: the message shows the header's whole format.
    resp = await dialect_gateway.get("/opendental/patients")
    body = await resp.json()
    assert resp.status == 401 and body["error"]["code"] == "missing_key"
    assert "Authorization: ODFHIR {DeveloperKey}/{CustomerKey}" in body["error"]["message"]
