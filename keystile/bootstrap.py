"""The demo organisation of ``keystile dev``: provider ``demo``, a root key and a sub key.

Raw keys are stored nowhere, so each start gives the two demo keys fresh secrets (their ids
stay); every other key survives restarts untouched."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from admin_api.repository import audit, keys, orgs
from admin_api.repository.audit import Actor
from gateway import keyformat
from gateway.database import Connection

SYSTEM = Actor("system", "keystile-dev")
DEMO_PROVIDER = "demo"
ROOT_SCOPES = ["*"]
SUB_SCOPES = ["echo:read"]


@dataclass(frozen=True, slots=True)
class DemoKeys:
    org_id: str
    root_key: str
    sub_key: str


async def _key(conn: Connection, org_id: str, role: str, values: dict[str, object]
               ) -> str:
    """Creates the demo key of ``role`` or gives the existing one a new secret."""
    raw = keyformat.generate("ks_live")
    existing = await conn.fetchval(
        "SELECT id FROM keys WHERE org_id = $1 AND metadata->>'demo' = $2", org_id, role)
    if existing:
        await keys.rotate(conn, existing, keyformat.hash_key(raw), timedelta(0))
        await keys.update(conn, existing, {"prefix": keyformat.display_prefix(raw)})
        await audit.record(conn, SYSTEM, "key.rotate", target_type="key", target_id=existing,
                           org_id=org_id, changes={"reason": "keystile dev start"},
                           request_id=None)
        return raw
    key_id = keyformat.new_id("key")
    await keys.insert(conn, {
        "id": key_id, "org_id": org_id, "environment": "development", "usage_limit": None,
        "expires_at": None, "quota": None, "rate_limits": [], "metadata": {"demo": role},
        "prefix": keyformat.display_prefix(raw), "key_prefix": "ks_live", **values,
    }, keyformat.hash_key(raw))
    await audit.record(conn, SYSTEM, "key.create", target_type="key", target_id=key_id,
                       org_id=org_id, changes={"demo": role}, request_id=None)
    return raw


async def ensure_demo(conn: Connection) -> DemoKeys:
    async with conn.transaction():
        org = await orgs.get_by_provider(conn, DEMO_PROVIDER)
        if org is None:
            org = await orgs.insert(conn, {
                "id": keyformat.new_id("org"), "name": "Demo organisation",
                "provider_id": DEMO_PROVIDER, "key_prefix": "ks_live", "key_defaults": {},
                "metadata": {}})
            await audit.record(conn, SYSTEM, "org.create", target_type="org",
                               target_id=org["id"], org_id=org["id"],
                               changes={"provider_id": DEMO_PROVIDER}, request_id=None)
        org_id = org["id"]
        root = await _key(conn, org_id, "root", {
            "owner_id": "demo-admin", "name": "demo root key", "root": True,
            "parent_id": None, "scopes": ROOT_SCOPES})
        root_id = await conn.fetchval(
            "SELECT id FROM keys WHERE org_id = $1 AND metadata->>'demo' = 'root'", org_id)
        sub = await _key(conn, org_id, "sub", {
            "owner_id": "demo-client", "name": "demo sub key", "root": False,
            "parent_id": root_id, "scopes": SUB_SCOPES})
    return DemoKeys(org_id, root, sub)
