"""``POST /v1/verify``: the gateway's key checks for services that are not behind it."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from admin_api.auth import Principal
from admin_api.models import VerifyRequest, VerifyResult
from admin_api.repository import orgs
from admin_api.state import POOL
from admin_api.views import respond
from gateway import scopes
from gateway.keyformat import hash_key
from gateway.keyrecord import fetch_by_hash
from gateway.verification import Code, check_format, check_provider, check_scopes, check_state


def _result(code: Code, found: dict[str, object] | None = None) -> web.Response:
    values = {"valid": code is Code.VALID, "code": code.value, **(found or {})}
    return respond(VerifyResult.model_validate(values))


async def verify(request: web.Request, principal: Principal, body: VerifyRequest
                 ) -> web.Response:
    """Answers 200 with ``valid`` and ``code`` for any key; only a malformed request is an
    error. Checks run in the gateway's order: format, lookup, state, provider, scopes. A root
    key verifies keys of its own organisation only."""
    pool = request.app[POOL]
    if check_format(body.key) is not Code.VALID:
        return _result(Code.INVALID_KEY)
    record = await fetch_by_hash(pool, hash_key(body.key))
    if record is None or (principal.key is not None and record.org_id != principal.key.org_id):
        return _result(Code.INVALID_KEY)
    found: dict[str, object] = {
        "key_id": record.id, "org_id": record.org_id, "owner_id": record.owner_id,
        "environment": record.environment, "scopes": list(record.scopes),
        "expires_at": record.expires_at, "metadata": record.metadata}
    code = check_state(record, datetime.now(UTC))
    if code is not Code.VALID:
        return _result(code, found)
    if body.provider is not None:
        org = await orgs.get_by_provider(pool, body.provider)
        if org is None:
            return _result(Code.INVALID_PROVIDER)
        if check_provider(record, org["id"]) is not Code.VALID:
            return _result(Code.INVALID_KEY)
    if check_scopes(record, body.scopes) is not Code.VALID:
        found["missing_scopes"] = scopes.missing(record.scopes, body.scopes)
        return _result(Code.INSUFFICIENT_SCOPE, found)
    return _result(Code.VALID, found)
