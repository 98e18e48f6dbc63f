"""A display prefix reveals at most 4 characters of a secret, for every key style and in
every API that shows one; the migration shortens the prefixes stored before."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from admin_api.migrate import available
from gateway import keyformat
from tests.admin_api.conftest import Admin
from tests.dialects import conftest as dialects
from tests.dialects.test_nuxera import token
from tests.gateway.conftest import upstream  # noqa: F401

# The dialect fixtures, used here too.
dialect_admin = dialects.dialect_admin
dialect_settings = dialects.dialect_settings
tenant = dialects.tenant


def shown_secret(display: str, raw: str) -> str:
    """The characters of the secret that ``display`` reveals (``raw`` starts with it)."""
    assert raw.startswith(display), (display, raw)
    public = raw.rpartition("_")[0]
    return display[len(public) + 1:] if public else display


@pytest.mark.parametrize("key_prefix", ["a", "ks_live", "x_" + "y" * 20])
async def test_canonical_api_shows_the_public_prefix_and_4_secret_chars(
        admin: Admin, key_prefix: str) -> None:
    org = await admin.org("acme", key_prefix=key_prefix)
    root = await admin.key(org["id"], root=True, scopes=["*"])
    created = await admin.key(org["id"], name="k")
    raw = created["key"]
    assert created["prefix"] == f"{key_prefix}_{raw[len(key_prefix) + 1:][:4]}"
    assert len(shown_secret(created["prefix"], raw)) == 4
    got = await admin.call("GET", f"/v1/keys/{created['id']}", expect=200)
    listed = await admin.call("GET", f"/v1/keys?org_id={org['id']}", expect=200)
    own = await admin.call("GET", "/v1/keys/self", headers={"X-API-Key": root["key"]},
                           expect=200)
    audit = await admin.call("GET", f"/v1/audit?target_id={created['id']}", expect=200)
    assert got["prefix"] == created["prefix"]
    assert created["prefix"] in [k["prefix"] for k in listed["data"]]
    assert len(shown_secret(own["prefix"], root["key"])) == 4
    assert audit["data"][-1]["changes"]["prefix"] == created["prefix"]
    rotated = await admin.call("POST", f"/v1/keys/{created['id']}/rotate", expect=200)
    assert len(shown_secret(rotated["prefix"], rotated["key"])) == 4


async def test_customer_key_shows_4_of_its_16_chars(dialect_admin: Admin,
                                                   tenant: dict[str, Any]) -> None:
    auth = {"Authorization": f"ODFHIR tenant/{tenant['root']['key']}"}
    customer = (await dialect_admin.call("POST", "/apikeys", headers=auth,
                                         expect=201))["CustomerKey"]
    listed = await dialect_admin.call("GET", f"/v1/keys?org_id={tenant['org']['id']}",
                                      expect=200)
    shown = [k["prefix"] for k in listed["data"] if not k["root"]]
    assert shown == [customer[:4]]


async def test_scrubbe_regen_and_nuxera_show_4_secret_chars(dialect_admin: Admin,
                                                            tenant: dict[str, Any]) -> None:
    scrubbe = await dialect_admin.call(
        "POST", "/api/v1/apikey/createapikey",
        headers={"Authorization": f"Bearer {tenant['root']['key']}"},
        json={"name": "s", "environment": "PRODUCTION", "scopes": ["a:b"]}, expect=201)
    assert scrubbe["keyPrefix"] == scrubbe["key"][:len("rg_") + 4]
    regen = await dialect_admin.call("POST", "/api/v1/api-keys",
                                     headers={"X-API-Key": tenant["root"]["key"]},
                                     json={"name": "r", "scopes": ["orders:read"]}, expect=201)
    assert regen["keyPrefix"] == regen["key"][:len("rg_") + 4]
    listed = await dialect_admin.call("GET", "/api/v1/api-keys",
                                      headers={"X-API-Key": tenant["root"]["key"]}, expect=200)
    assert {k["keyPrefix"] for k in listed["data"]} >= {scrubbe["keyPrefix"], regen["keyPrefix"]}
    nuxera = await dialect_admin.call("POST", "/api/apiKeys", headers=token(), json={
        "name": "n", "type": "t2yd", "status": "active"}, expect=201)
    got = await dialect_admin.call("GET", f"/api/apiKeys/{nuxera['id']}", headers=token(),
                                   expect=200)
    assert got["key"] == nuxera["key"][:len("rg_") + 4] + "…"


async def test_migration_shortens_stored_prefixes(db: asyncpg.Connection) -> None:
    canonical = keyformat.generate("ks_live")
    short = keyformat.generate("a")
    long_public = keyformat.generate("averylongpublic_prefix")
    customer = keyformat.generate_customer_key()
    rows = [("key_1", canonical, "ks_live", canonical[:12]),
            ("key_2", short, "a", short[:6]),
            ("key_3", long_public, "averylongpublic_prefix", long_public[:12]),
            ("key_4", customer, "od", customer[:4])]
    await db.execute("INSERT INTO orgs (id, name, provider_id, key_prefix) "
                     "VALUES ('org_1', 'o', 'o', 'ks_live')")
    for key_id, raw, key_prefix, _ in rows:
        await db.execute("INSERT INTO keys (id, org_id, prefix, key_prefix) "
                         "VALUES ($1, 'org_1', $2, $3)", key_id, raw[:12], key_prefix)
        await db.execute("INSERT INTO audit_log (actor_type, action, target_type, target_id, "
                         "changes) VALUES ('operator', 'key.create', 'key', $1, $2)",
                         key_id, {"prefix": raw[:12], "name": "k"})
    # A key deleted since: its audit entry still gets a short prefix.
    gone = keyformat.generate("k")
    await db.execute("INSERT INTO audit_log (actor_type, action, target_type, target_id, "
                     "changes) VALUES ('operator', 'key.create', 'key', 'key_9', $1)",
                     {"prefix": gone[:12]})

    migration = next(m for m in available() if m.name == "short_display_prefix")
    async with db.transaction():
        await db.execute(migration.sql)

    stored = dict(await db.fetch("SELECT id, prefix FROM keys"))
    assert stored == {key_id: expected for key_id, _, _, expected in rows}
    audited = dict(await db.fetch("SELECT target_id, changes ->> 'prefix' FROM audit_log"))
    assert audited == {**stored, "key_9": gone[:6]}
