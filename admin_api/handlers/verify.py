"""``POST /v1/verify``: the gateway's key checks for services that are not behind it."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from admin_api.auth import Principal
from admin_api.models import VerifyRequest, VerifyResult
from admin_api.state import POOL
from admin_api.views import respond
from gateway.verification import Code
from gateway.verification import verify as verify_key


async def verify(request: web.Request, principal: Principal, body: VerifyRequest
                 ) -> web.Response:
    """Answers 200 with ``valid`` and ``code`` for any key; only a malformed request is an
    error. A root key verifies keys of its own organisation only."""
    verdict = await verify_key(
        request.app[POOL], body.key, now=datetime.now(UTC), provider=body.provider,
        required=body.scopes, within_org=principal.key.org_id if principal.key else None)
    result = VerifyResult(valid=verdict.valid, code=verdict.code.value)
    record = verdict.record
    if record is not None and verdict.code not in (Code.INVALID_KEY, Code.INVALID_PROVIDER):
        result = VerifyResult(
            valid=verdict.valid, code=verdict.code.value, key_id=record.id,
            org_id=record.org_id, owner_id=record.owner_id, environment=record.environment,
            scopes=list(record.scopes), expires_at=record.expires_at, metadata=record.metadata,
            missing_scopes=list(verdict.missing_scopes) or None)
    return respond(result)
