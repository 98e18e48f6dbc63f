"""Rate limits shared by all keys of one owner (a clinic, a user, a customer)."""

from __future__ import annotations

from aiohttp import web

from admin_api import auth
from admin_api.auth import Principal
from admin_api.caps import MAX_ID_LEN
from admin_api.changes import Changes
from admin_api.errors import REQUEST_ID, NotFound, Unprocessable
from admin_api.models import OwnerLimits, OwnerLimitsOut
from admin_api.repository import audit, orgs
from admin_api.state import POOL, REDIS
from admin_api.views import respond


def _target(request: web.Request, principal: Principal) -> tuple[str, str]:
    org_id = auth.org_scope(principal, request.match_info["id"], in_path=True)
    assert org_id is not None
    owner_id = request.match_info["owner_id"]
    if len(owner_id) > MAX_ID_LEN:
        raise Unprocessable(f"owner_id: must be at most {MAX_ID_LEN} characters",
                            code="validation_failed")
    return org_id, owner_id


async def get_owner_limits(request: web.Request, principal: Principal) -> web.Response:
    org_id, owner_id = _target(request, principal)
    pool = request.app[POOL]
    if await orgs.get(pool, org_id) is None:
        raise NotFound("no organisation with that id", code="org_not_found")
    limits = await orgs.owner_limits(pool, org_id, owner_id) or []
    return respond(OwnerLimitsOut(org_id=org_id, owner_id=owner_id, rate_limits=limits))


async def put_owner_limits(request: web.Request, principal: Principal, body: OwnerLimits
                           ) -> web.Response:
    org_id, owner_id = _target(request, principal)
    limits = [r.model_dump() for r in body.rate_limits]
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        if await orgs.get(conn, org_id, lock="KEY SHARE") is None:
            raise NotFound("no organisation with that id", code="org_not_found")
        current = await orgs.owner_limits(conn, org_id, owner_id) or []
        auth.require_not_own_owner_limits_raised(principal, org_id, owner_id, current, limits)
        await orgs.set_owner_limits(conn, org_id, owner_id, limits)
        await audit.record(conn, principal.actor, "owner.limits", target_type="owner",
                           target_id=owner_id, org_id=org_id,
                           changes={"rate_limits": limits}, request_id=request[REQUEST_ID])
        await changes.org(conn, org_id)  # cached keys carry their owner's limits
    await changes.announce(request.app[POOL], request.app[REDIS])
    return respond(OwnerLimitsOut(org_id=org_id, owner_id=owner_id, rate_limits=limits))


async def delete_owner_limits(request: web.Request, principal: Principal) -> web.Response:
    org_id, owner_id = _target(request, principal)
    changes = Changes()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        current = await orgs.owner_limits(conn, org_id, owner_id) or []
        auth.require_not_own_owner_limits_raised(principal, org_id, owner_id, current, [])
        if not await orgs.delete_owner_limits(conn, org_id, owner_id):
            raise NotFound("this owner has no shared limits", code="owner_limits_not_found")
        await audit.record(conn, principal.actor, "owner.limits", target_type="owner",
                           target_id=owner_id, org_id=org_id, changes={"rate_limits": []},
                           request_id=request[REQUEST_ID])
        await changes.org(conn, org_id)
    await changes.announce(request.app[POOL], request.app[REDIS])
    return respond(None, 204)
