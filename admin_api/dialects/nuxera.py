"""Nuxera (seeds/nuxera-api-keys.txt): ``/api/apiKeys`` — create, list, get, update, delete,
pause, resume, setDefault, removeDefault, userKeys — with integer ids (the key serial),
managed by ``Authorization: Bearer <JWT>`` (HS256; ``sub`` is the user, who owns the keys;
the ``org`` claim names the organisation's provider_id). Management is rate limited per user
(100 a minute, 1,000 an hour) with Keystile's own limiter, and errors honour
``x-response-format: fhir | hl7``.

The seed shows ``key`` in every object; Keystile keeps no raw key after creation, so later
responses carry a masked form (the display prefix and "…")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import jwt
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from admin_api.auth import OPERATOR, Principal
from admin_api.caps import MAX_NAME_LEN
from admin_api.dialects.common import problem, wording
from admin_api.errors import REQUEST_ID, ApiError, ErrorShape
from admin_api.handlers import keys as core
from admin_api.models import KeyCreate, KeyOut, KeyUpdate
from admin_api.repository import keys as key_rows
from admin_api.repository.audit import Actor
from admin_api.state import LIMITER, POOL, SETTINGS
from gateway.errors import GatewayError, render
from gateway.limits.decision import Window
from gateway.verification import org_for_provider

MANAGEMENT_LIMITS = [Window("user", 100, 60), Window("user", 1000, 3600)]
NOT_FOUND = "API Key not found"
INVALID = "Invalid request data"
ROOT = "/api/apiKeys"  # every path of the dialect, and its errors' shape
MAX_ID_DIGITS = 18  # ids and user ids fit a signed 64-bit integer


class NuxeraError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: str = Field(min_length=1, max_length=MAX_NAME_LEN)
    type: Literal["ai-medical-note", "t2yd"]
    status: Literal["active", "paused", "expired"]


class UpdateKey(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_LEN)
    type: Literal["ai-medical-note", "t2yd"] | None = None


class DefaultChange(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    id: int
    old_id: int | None = None


OWNER_PREFIX = "nuxera:"  # Nuxera users own keys in a namespace of their own


class Caller:
    """The JWT's user, acting on the keys they own within their organisation — and on no
    other: their keys' owner is ``nuxera:<sub>``, a namespace no other dialect writes to."""

    def __init__(self, org_id: str, user: str) -> None:
        self.org_id, self.user = org_id, user
        self.owner = OWNER_PREFIX + user
        self.principal = Principal(OPERATOR, on_behalf_of=Actor("system", self.owner))


def _user_id(owner: str | None) -> int:
    """The seed's integer ``user_id``: a caller's ``sub`` is always an integer id."""
    return int((owner or "").removeprefix(OWNER_PREFIX))


def _integer_id(value: object) -> str | None:
    """An integer id (JSON number or string of digits) in canonical form, e.g. "0042" → "42"."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
        return None
    return str(int(value)) if len(value) <= MAX_ID_DIGITS else None


def _view(key: KeyOut, raw: str | None = None) -> dict[str, Any]:
    return {"id": key.serial, "key": raw or f"{key.prefix}…", "name": key.name,
            "type": key.metadata.get("nuxera_type", "ai-medical-note"),
            "status": "paused" if key.status == "revoked" else key.status,
            "is_default": key.is_default,
            "created_at": _iso(key.created_at), "expiry_at": _iso(key.expires_at),
            "user_id": _user_id(key.owner_id)}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _caller(request: web.Request) -> Caller:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NuxeraError(401, "JWT token required")
    options = request.app[SETTINGS].dialect_options("nuxera")
    assert options.jwt_secret is not None  # checked when the dialect is mounted
    try:
        # verify_sub off: PyJWT wants a string sub, and a numeric one is a user id too.
        claims = jwt.decode(token.strip(), options.jwt_secret, algorithms=["HS256"],
                            options={"require": ["sub", "exp"], "verify_sub": False})
    except jwt.ExpiredSignatureError:
        raise NuxeraError(401, "JWT token expired") from None
    except jwt.InvalidTokenError:
        raise NuxeraError(401, "Invalid JWT token") from None
    provider = claims.get(options.org_claim)
    org_id = (await org_for_provider(request.app[POOL], provider)
              if isinstance(provider, str) else None)
    if org_id is None:
        raise NuxeraError(401, f"the JWT's '{options.org_claim}' claim names no organisation")
    user = _integer_id(claims["sub"])  # 42 and "42" are user 42, as the seed's user_id
    if user is None:
        raise NuxeraError(401, "Invalid JWT token: 'sub' must be the user's integer id")
    caller = Caller(org_id, user)
    decision = await request.app[LIMITER].hit(f"nuxera:{org_id}", f"user:{caller.user}",
                                              MANAGEMENT_LIMITS, datetime.now(UTC))
    if not decision.allowed:
        raise NuxeraError(429, "Too many requests",
                          {"Retry-After": str(decision.retry_after_s or 1)})
    return caller


async def _key_id(request: web.Request, caller: Caller, raw_id: Any) -> str:
    """The key of this user with the integer id ``raw_id``."""
    text = _integer_id(raw_id)
    if text is None:
        raise NuxeraError(400, INVALID)
    serial = int(text)
    key_id = await key_rows.id_by_serial(request.app[POOL], caller.org_id, serial)
    if key_id is None:
        raise NuxeraError(404, NOT_FOUND)
    key = await core.read(request, caller.principal, key_id)
    if key.owner_id != caller.owner or key.root:
        raise NuxeraError(404, NOT_FOUND)
    return key_id


async def _parse(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.read() or b"{}")
    except ValidationError as exc:  # the seed's words, then what to fix
        raise NuxeraError(400, f"{INVALID}: {problem(exc)}") from None


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise NuxeraError(400, INVALID)
    return value


def _error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """``{"error": message, "request_id": …}``, or FHIR / HL7 when ``x-response-format`` asks."""
    status, message = wording(request, status, code, message)
    request_id = request[REQUEST_ID]
    error = GatewayError(f"nuxera_{status}", message, status=status)
    response = render(request, error, request_id,
                      json_body={"error": message, "request_id": request_id})
    response.headers["Cache-Control"] = "no-store"
    return response


ERROR: ErrorShape = _error


def handler(fn: Any) -> Any:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await fn(request)  # type: ignore[no-any-return]
        except NuxeraError as exc:
            response = _error(request, exc.status, "nuxera", exc.message)
            response.headers.update(exc.headers)
            return response
        except ApiError as exc:
            return _error(request, exc.status, exc.code,
                          NOT_FOUND if exc.status == 404 else exc.message)
        except ValidationError:  # a value the core refuses (too long, NUL, out of range)
            return _error(request, 400, "validation_failed", INVALID)

    wrapped.__name__ = fn.__name__
    return wrapped


def json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


@handler
async def create(request: web.Request) -> web.Response:
    caller = await _caller(request)
    spec = await _parse(request, CreateKey)
    created = await core.create(request, caller.principal, KeyCreate(
        org_id=caller.org_id, owner_id=caller.owner, name=_no_nul(spec.name),
        metadata={"nuxera_type": spec.type}, scopes=[]))
    out: KeyOut = created
    if spec.status == "paused":
        out = await core.set_status(request, caller.principal, created.id, "key.pause",
                                    "paused")
    elif spec.status == "expired":
        out = await core.update(request, caller.principal, created.id,
                                KeyUpdate(expires_at=datetime.now(UTC)))
    return json(_view(out, created.key), 201)


async def _list(request: web.Request, caller: Caller, user: str) -> web.Response:
    return json([_view(k) async for k in core.every(
        request, caller.principal, org_id=caller.org_id, owner_id=OWNER_PREFIX + user,
        root=False)])


@handler
async def list_keys(request: web.Request) -> web.Response:
    caller = await _caller(request)
    return await _list(request, caller, caller.user)


@handler
async def user_keys(request: web.Request) -> web.Response:
    caller = await _caller(request)
    user = _integer_id(request.match_info["user_id"])
    if user is None:
        raise NuxeraError(400, INVALID)
    if user != caller.user:  # a user sees their own keys only
        raise NuxeraError(404, NOT_FOUND)
    return await _list(request, caller, caller.user)


@handler
async def get(request: web.Request) -> web.Response:
    caller = await _caller(request)
    key_id = await _key_id(request, caller, request.match_info["id"])
    return json(_view(await core.read(request, caller.principal, key_id)))


@handler
async def update(request: web.Request) -> web.Response:
    caller = await _caller(request)
    key_id = await _key_id(request, caller, request.match_info["id"])
    spec = await _parse(request, UpdateKey)
    current = await core.read(request, caller.principal, key_id)
    changes: dict[str, Any] = {}
    if spec.name is not None:
        changes["name"] = _no_nul(spec.name)
    if spec.type is not None:
        changes["metadata"] = {**current.metadata, "nuxera_type": spec.type}
    if not changes:
        raise NuxeraError(400, INVALID)
    return json(_view(await core.update(request, caller.principal, key_id,
                                        KeyUpdate(**changes))))


@handler
async def delete(request: web.Request) -> web.Response:
    caller = await _caller(request)
    key_id = await _key_id(request, caller, request.match_info["id"])
    await core.delete(request, caller.principal, key_id)
    return json({"message": "API Key deleted"})


def _status(action: str, target: str) -> Any:
    @handler
    async def change(request: web.Request) -> web.Response:
        caller = await _caller(request)
        key_id = await _key_id(request, caller, request.match_info["id"])
        if target == "active" and (await core.read(request, caller.principal, key_id)
                                   ).status == "expired":
            raise NuxeraError(409, "API Key has expired and cannot be resumed; create a new "
                              "key")
        return json(_view(await core.set_status(request, caller.principal, key_id, action,
                                                target)))

    return change


@handler
async def set_default(request: web.Request) -> web.Response:
    caller = await _caller(request)
    spec = await _parse(request, DefaultChange)
    key_id = await _key_id(request, caller, spec.id)
    if spec.old_id is not None:
        await _key_id(request, caller, spec.old_id)  # must exist and be the user's
    return json(_view(await core.change_default(request, caller.principal, key_id, True)))


@handler
async def remove_default(request: web.Request) -> web.Response:
    caller = await _caller(request)
    spec = await _parse(request, DefaultChange)
    key_id = await _key_id(request, caller, spec.id)
    return json(_view(await core.change_default(request, caller.principal, key_id, False)))


ROUTES = [
    ("POST", "/api/apiKeys", create),
    ("GET", "/api/apiKeys", list_keys),
    ("GET", "/api/apiKeys/", list_keys),
    ("PATCH", "/api/apiKeys/setDefault", set_default),
    ("PATCH", "/api/apiKeys/removeDefault", remove_default),
    ("GET", "/api/apiKeys/userKeys/{user_id}", user_keys),
    ("GET", "/api/apiKeys/{id}", get),
    ("PUT", "/api/apiKeys/{id}", update),
    ("DELETE", "/api/apiKeys/{id}", delete),
    ("PATCH", "/api/apiKeys/{id}/pause", _status("key.pause", "paused")),
    ("PATCH", "/api/apiKeys/{id}/resume", _status("key.resume", "active")),
]
