"""Regen (seeds/regen-api-keys.txt): ``/api/v1/api-keys`` CRUD and rotate, managed with a
root key in ``X-API-Key``. Scopes come from a configured list (the seed's nine by default);
rotation keeps the old key valid for 5 more minutes, as documented."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict

from admin_api.auth import Principal
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
from admin_api.models import KeyCreate, KeyOut, KeyUpdate, Scopes
from admin_api.state import SETTINGS
from gateway.settings import REGEN_SCOPES

ROOT = "/api/v1/api-keys"  # every path of the dialect, and its errors' shape
# Every refused value is 400 and names the field as Regen spells it (expiresAt).
ERROR: ErrorShape = renamed(error, CAMEL_CASE)
handler = handler_in(ERROR)
ROTATION_GRACE_S = 300


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str  # capped by the core's KeyCreate
    scopes: Scopes
    expiresAt: AwareDatetime | None = None


class UpdateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = None
    scopes: Scopes | None = None
    expiresAt: AwareDatetime | None = None


def _view(key: KeyOut) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "keyPrefix": key.prefix, "scopes": key.scopes,
            "createdAt": iso(key.created_at), "expiresAt": iso(key.expires_at),
            "lastUsedAt": iso(key.last_used_at)}


def _check_scopes(request: web.Request, scopes: list[str]) -> list[str]:
    available = request.app[SETTINGS].dialect_options("regen").available_scopes or REGEN_SCOPES
    unknown = [s for s in scopes if s not in available]
    if unknown:
        raise DialectError(400, f"unknown scope '{unknown[0]}'; available scopes: "
                           f"{', '.join(available)}")
    return scopes


async def _caller(request: web.Request) -> Principal:
    return await root_key(request, request.headers.get("X-API-Key"))


@handler
async def create(request: web.Request) -> web.Response:
    principal = await _caller(request)
    spec = await body(request, CreateKey, "the request body is invalid")
    created = await core.create(request, principal, KeyCreate(
        name=spec.name, scopes=_check_scopes(request, spec.scopes), expires_at=spec.expiresAt))
    return json({**_view(created), "key": created.key}, 201)


@handler
async def list_keys(request: web.Request) -> web.Response:
    principal = await _caller(request)
    return json({"data": [_view(k) async for k in core.every(request, principal)]})


@handler
async def get(request: web.Request) -> web.Response:
    principal = await _caller(request)
    return json(_view(await core.read(request, principal, request.match_info["id"])))


@handler
async def update(request: web.Request) -> web.Response:
    principal = await _caller(request)
    spec = await body(request, UpdateKey, "the request body is invalid")
    changes: dict[str, Any] = {}
    if "name" in spec.model_fields_set and spec.name is not None:
        changes["name"] = spec.name
    if "scopes" in spec.model_fields_set and spec.scopes is not None:
        changes["scopes"] = _check_scopes(request, spec.scopes)
    if "expiresAt" in spec.model_fields_set:
        changes["expires_at"] = spec.expiresAt
    if not changes:
        raise DialectError(400, "send name, scopes or expiresAt to change")
    updated = await core.update(request, principal, request.match_info["id"],
                                KeyUpdate(**changes))
    return json(_view(updated))


@handler
async def delete(request: web.Request) -> web.Response:
    principal = await _caller(request)
    await core.delete(request, principal, request.match_info["id"])
    return json({"id": request.match_info["id"], "deleted": True})


@handler
async def rotate(request: web.Request) -> web.Response:
    principal = await _caller(request)
    rotated = await core.rotate(request, principal, request.match_info["id"], ROTATION_GRACE_S)
    return json({**_view(rotated), "key": rotated.key,
                 "previousKeyExpiresAt": iso(rotated.previous_expires_at)})


ROUTES = [
    ("GET", "/api/v1/api-keys", list_keys),
    ("POST", "/api/v1/api-keys", create),
    ("GET", "/api/v1/api-keys/{id}", get),
    ("PUT", "/api/v1/api-keys/{id}", update),
    ("DELETE", "/api/v1/api-keys/{id}", delete),
    ("POST", "/api/v1/api-keys/{id}/rotate", rotate),
]
