"""Scrubbe (seeds/scrubbe-api-keys.txt): createapikey / apikeys / rotate / revoke / delete,
managed with ``Authorization: Bearer <root key>``. Rotation invalidates the old value at once;
a revoked key stays listed. Clients send ``X-API-Key`` (see ``credentials = "scrubbe"``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict

from admin_api.auth import Principal
from admin_api.caps import Name
from admin_api.dialects.common import (
    CAMEL_CASE,
    DialectError,
    body,
    error,
    handler_in,
    iso,
    json,
    renamed,
    root_key,
)
from admin_api.errors import ErrorShape
from admin_api.handlers import keys as core
from admin_api.models import Environment, KeyCreate, KeyOut, Scopes

ROOT = "/api/v1/apikey"  # every path of the dialect, and its errors' shape
ERROR: ErrorShape = renamed(error, CAMEL_CASE)
handler = handler_in(ERROR)

ENVIRONMENTS: dict[str, Environment] = {
    "PRODUCTION": "production", "STAGING": "staging", "DEVELOPMENT": "development"}


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    environment: Literal["PRODUCTION", "STAGING", "DEVELOPMENT"]
    scopes: Scopes
    expiresAt: AwareDatetime | None = None


def _view(key: KeyOut) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "environment": key.environment.upper(),
            "scopes": key.scopes, "status": key.status.upper(), "keyPrefix": key.prefix,
            "createdAt": iso(key.created_at), "expiresAt": iso(key.expires_at),
            "lastUsedAt": iso(key.last_used_at)}


async def _caller(request: web.Request) -> Principal:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise DialectError(401, "send 'Authorization: Bearer <your root API key>'")
    return await root_key(request, token)


@handler
async def create(request: web.Request) -> web.Response:
    principal = await _caller(request)
    spec = await body(request, CreateKey, "the request body is invalid")
    if spec.expiresAt is not None and spec.expiresAt <= datetime.now(UTC):
        raise DialectError(400, "expiresAt must be in the future")
    created = await core.create(request, principal, KeyCreate(
        name=spec.name, environment=ENVIRONMENTS[spec.environment], scopes=spec.scopes,
        expires_at=spec.expiresAt))
    return json({**_view(created), "key": created.key}, 201)


@handler
async def list_keys(request: web.Request) -> web.Response:
    principal = await _caller(request)
    return json({"data": [_view(k) async for k in core.every(request, principal)]})


@handler
async def rotate(request: web.Request) -> web.Response:
    principal = await _caller(request)
    rotated = await core.rotate(request, principal, request.match_info["id"], 0)
    return json({**_view(rotated), "key": rotated.key})


@handler
async def revoke(request: web.Request) -> web.Response:
    principal = await _caller(request)
    revoked = await core.set_status(request, principal, request.match_info["id"], "key.revoke",
                                    "revoked")
    return json(_view(revoked))


@handler
async def delete(request: web.Request) -> web.Response:
    principal = await _caller(request)
    await core.delete(request, principal, request.match_info["id"])
    return json({"id": request.match_info["id"], "deleted": True})


ROUTES = [
    ("POST", "/api/v1/apikey/createapikey", create),
    ("GET", "/api/v1/apikey/apikeys", list_keys),
    ("POST", "/api/v1/apikey/{id}/rotate", rotate),
    ("POST", "/api/v1/apikey/{id}/revoke", revoke),
    ("DELETE", "/api/v1/apikey/{id}", delete),
]
