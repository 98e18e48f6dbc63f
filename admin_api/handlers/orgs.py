"""Organisations (operator only)."""

from __future__ import annotations

from typing import Literal

import asyncpg
from aiohttp import web

from admin_api.auth import Principal
from admin_api.changes import Changes
from admin_api.errors import REQUEST_ID, Conflict, NotFound
from admin_api.inputs import decode_cursor, encode_cursor, patch_fields
from admin_api.models import OrgCreate, OrgDeleteQuery, OrgList, OrgListQuery, OrgUpdate
from admin_api.repository import audit, orgs
from admin_api.state import POOL, REDIS
from admin_api.views import audit_view, org_out, respond
from gateway.database import Queryable
from gateway.keyformat import new_id


def _duplicate_provider(provider_id: str) -> Conflict:
    return Conflict(f"provider_id {provider_id!r} is already used by another organisation; "
                    "choose another", code="provider_id_taken")


async def create_org(request: web.Request, principal: Principal, body: OrgCreate) -> web.Response:
    values = body.model_dump(mode="json")
    values["id"] = new_id("org")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        try:
            row = await orgs.insert(conn, values)
        except asyncpg.UniqueViolationError:
            raise _duplicate_provider(body.provider_id) from None
        out = org_out(row)
        await audit.record(conn, principal.actor, "org.create", target_type="org",
                           target_id=out.id, org_id=out.id, changes=audit_view(out),
                           request_id=request[REQUEST_ID])
    return respond(out, 201)


async def list_orgs(request: web.Request, principal: Principal, query: OrgListQuery
                    ) -> web.Response:
    rows = await orgs.page(request.app[POOL], decode_cursor(query.cursor), query.limit + 1)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = encode_cursor(rows[-1]["id"]) if more else None
    return respond(OrgList(data=[org_out(r) for r in rows], next_cursor=cursor))


async def get_org(request: web.Request, principal: Principal) -> web.Response:
    return respond(org_out(await _load(request.app[POOL], request.match_info["id"])))


async def _load(conn: Queryable, org_id: str, lock: Literal["UPDATE"] | None = None
                ) -> asyncpg.Record:
    row = await orgs.get(conn, org_id, lock)
    if row is None:
        raise NotFound("no organisation with that id", code="org_not_found")
    return row


async def update_org(request: web.Request, principal: Principal, body: OrgUpdate
                     ) -> web.Response:
    org_id = request.match_info["id"]
    fields = patch_fields(body)
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _load(conn, org_id, "UPDATE")
        await changes.org(conn, org_id)
        try:
            row = await orgs.update(conn, org_id, fields)
        except asyncpg.UniqueViolationError:
            raise _duplicate_provider(str(fields.get("provider_id"))) from None
        assert row is not None
        await audit.record(conn, principal.actor, "org.update", target_type="org",
                           target_id=org_id, org_id=org_id, changes=fields,
                           request_id=request[REQUEST_ID])
    await changes.announce(request.app[POOL], request.app[REDIS])
    return respond(org_out(row))


async def delete_org(request: web.Request, principal: Principal, query: OrgDeleteQuery
                     ) -> web.Response:
    org_id = request.match_info["id"]
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _load(conn, org_id, "UPDATE")  # new keys wait for this transaction
        await changes.org(conn, org_id)
        key_ids = await orgs.key_ids(conn, org_id)
        if key_ids and not query.cascade:
            raise Conflict(f"organisation {org_id} still has {len(key_ids)} key(s); delete them "
                           "first or pass ?cascade=true to delete them with it",
                           code="org_has_keys")
        for key_id in key_ids:
            await audit.record(conn, principal.actor, "key.delete", target_type="key",
                               target_id=key_id, org_id=org_id,
                               changes={"reason": "organisation deleted"},
                               request_id=request[REQUEST_ID])
        await orgs.delete(conn, org_id)
        await audit.record(conn, principal.actor, "org.delete", target_type="org",
                           target_id=org_id, org_id=org_id,
                           changes={"deleted_keys": len(key_ids)},
                           request_id=request[REQUEST_ID])
    # Gateways drop every cached key of an organisation on its invalidation.
    await changes.announce(request.app[POOL], request.app[REDIS])
    return respond(None, 204)
