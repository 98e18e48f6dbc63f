"""The demo organisation of ``keystile dev``: provider ``demo``, a root key and a sub key.

Raw keys are stored nowhere, so each start gives the two demo keys fresh secrets (their ids
stay) and makes them usable again (active, no expiry); a revoked demo key is replaced by a
new one. Every other key survives restarts untouched."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from admin_api.changes import Changes
from admin_api.repository import audit, keys, orgs
from admin_api.repository.audit import Actor
from admin_api.views import audit_view, key_out
from gateway import keyformat
from gateway.database import Connection
from gateway.secretbox import SecretBoxError, open_, seal

SYSTEM = Actor("system", "keystile-dev")
DEMO_PROVIDER = "demo"
DEMO_PREFIX = "ks_dev"
ROOT_SCOPES = ["*"]
SUB_SCOPES = ["echo:read"]


@dataclass(frozen=True, slots=True)
class DemoKeys:
    org_id: str
    root_id: str
    root_key: str
    sub_key: str


async def _record(conn: Connection, action: str, key_id: str, org_id: str,
                  changes: dict[str, object]) -> None:
    await audit.record(conn, SYSTEM, action, target_type="key", target_id=key_id,
                       org_id=org_id, changes=changes, request_id=None)


async def _refresh(conn: Connection, key_id: str, org_id: str, changes: Changes) -> str:
    """A fresh secret for an existing demo key, which is made active again."""
    await changes.key(conn, key_id)  # the old secret's shared record must go too
    raw = keyformat.generate(DEMO_PREFIX)
    await keys.rotate(conn, key_id, keyformat.hash_key(raw), keyformat.display_prefix(raw),
                      timedelta(0))
    await conn.execute("UPDATE keys SET status = 'active', expires_at = NULL, "
                       "key_prefix = $2, updated_at = now() WHERE id = $1", key_id, DEMO_PREFIX)
    await _record(conn, "key.rotate", key_id, org_id,
                  {"reason": "keystile dev start: fresh demo secret, key active"})
    return raw


async def _demo_key(conn: Connection, org_id: str, role: str, values: dict[str, object],
                    changes: Changes) -> tuple[str, str]:
    """(key id, raw key) of the live demo key of ``role``, created when there is none."""
    existing = await conn.fetchval(
        "SELECT id FROM keys WHERE org_id = $1 AND metadata->>'demo' = $2 "
        "AND status <> 'revoked' ORDER BY serial DESC LIMIT 1", org_id, role)
    if existing:
        return existing, await _refresh(conn, existing, org_id, changes)
    raw = keyformat.generate(DEMO_PREFIX)
    record = await keys.insert(conn, {
        "id": keyformat.new_id("key"), "org_id": org_id, "environment": "development",
        "usage_limit": None, "expires_at": None, "quota": None, "rate_limits": [],
        "metadata": {"demo": role}, "prefix": keyformat.display_prefix(raw),
        "key_prefix": DEMO_PREFIX, **values,
    }, keyformat.hash_key(raw))
    await _record(conn, "key.create", record.id, org_id, audit_view(key_out(record)))
    return record.id, raw


async def ensure_demo(conn: Connection, changes: Changes) -> DemoKeys:
    """``changes`` collects what the caller must announce to gateways once committed."""
    async with conn.transaction():
        org = await orgs.get_by_provider(conn, DEMO_PROVIDER)
        if org is None:
            org = await orgs.insert(conn, {
                "id": keyformat.new_id("org"), "name": "Demo organisation",
                "provider_id": DEMO_PROVIDER, "key_prefix": DEMO_PREFIX,
                "key_defaults": {"environment": "development"}, "metadata": {}})
            await audit.record(conn, SYSTEM, "org.create", target_type="org",
                               target_id=org["id"], org_id=org["id"],
                               changes={"provider_id": DEMO_PROVIDER}, request_id=None)
        org_id = org["id"]
        root_id, root = await _demo_key(conn, org_id, "root", {
            "owner_id": "demo-admin", "name": "demo root key", "root": True,
            "parent_id": None, "scopes": ROOT_SCOPES}, changes)
        _, sub = await _demo_key(conn, org_id, "sub", {
            "owner_id": "demo-client", "name": "demo sub key", "root": False,
            "parent_id": root_id, "scopes": SUB_SCOPES}, changes)
    return DemoKeys(org_id, root_id, root, sub)


async def ensure_customer_key(conn: Connection, org_id: str, box_key: bytes) -> str:
    """The demo organisation's Open Dental CustomerKey: recoverable, so the same one is shown
    on every start."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, secret_ciphertext FROM keys WHERE org_id = $1 "
            "AND metadata->>'demo' = 'customer' AND status = 'active'", org_id)
        if row is not None and row["secret_ciphertext"] is not None:
            try:
                return open_(box_key, row["id"], bytes(row["secret_ciphertext"]))
            except SecretBoxError:  # the data folder's encryption key changed: replace it
                await conn.execute("UPDATE keys SET status = 'revoked', revoked_at = now() "
                                   "WHERE id = $1", row["id"])
        raw = keyformat.generate_customer_key()
        key_id = keyformat.new_id("key")
        record = await keys.insert(conn, {
            "id": key_id, "org_id": org_id, "owner_id": "demo-practice",
            "name": "demo customer key", "environment": "development", "root": False,
            "parent_id": None, "scopes": [], "usage_limit": None, "expires_at": None,
            "quota": None, "rate_limits": [], "metadata": {"demo": "customer", "opendental": True},
            "prefix": keyformat.display_prefix(raw),
            "key_prefix": keyformat.CUSTOMER_KEY_PREFIX,
            "secret_ciphertext": seal(box_key, key_id, raw)}, keyformat.hash_key(raw))
        await _record(conn, "key.create", record.id, org_id, audit_view(key_out(record)))
    return raw
