"""``GET /v1/audit``: who changed which key or organisation, newest first."""

from __future__ import annotations

from aiohttp import web

from admin_api import auth
from admin_api.auth import Principal
from admin_api.inputs import decode_int_cursor, encode_cursor
from admin_api.models import AuditEntry, AuditList, AuditQuery
from admin_api.repository import audit
from admin_api.state import POOL
from admin_api.views import respond


async def list_audit(request: web.Request, principal: Principal, query: AuditQuery
                     ) -> web.Response:
    rows = await audit.page(
        request.app[POOL], org_id=auth.org_scope(principal, query.org_id),
        target_id=query.target_id, action=query.action,
        before=decode_int_cursor(query.cursor), limit=query.limit + 1)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return respond(AuditList(data=[AuditEntry.model_validate(dict(r)) for r in rows],
                             next_cursor=encode_cursor(rows[-1]["id"]) if more else None))
