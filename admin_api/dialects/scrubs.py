"""Scrubs (seeds/scrubs-clinic-api-keys.txt): ``/api/v1/api-key`` GET / POST / PUT / DELETE,
authenticated by ``X-Scrubs-Clinic-Api-Key`` + ``X-Scrubs-Clinic-Provider`` (the provider is
the organisation's ``provider_id``). A clinic is a key owner, with one key per clinic per
organisation; ``usage_limit`` defaults to 5 and the gateway enforces it. Messages are the
seed's own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from admin_api.auth import KEY, Principal
from admin_api.caps import MAX_ID_LEN, MAX_NAME_LEN
from admin_api.dialects.common import DialectError, error, handler, iso, json, problem
from admin_api.errors import ApiError, ErrorShape
from admin_api.handlers import keys as core
from admin_api.models import MAX_COUNT, KeyCreate, KeyOut, KeyUpdate
from admin_api.state import POOL
from gateway.verification import Code, verify

ROOT = "/api/v1/api-key"  # every path of the dialect, and its errors' shape
ERROR: ErrorShape = error
KEY_HEADER = "X-Scrubs-Clinic-Api-Key"
PROVIDER_HEADER = "X-Scrubs-Clinic-Provider"
DEFAULT_USAGE_LIMIT = 5

AUTH_FAILED = "API key authentication failed."
ROOT_REQUIRED = "Root API key is required."


INVALID = "Request body is invalid."


def _whole_number(value: object) -> object:
    """The seed's usage_limit is a "number": 100.0 is 100 calls; 10.5 calls is refused."""
    if isinstance(value, bool) or not isinstance(value, int | float | None):
        raise ValueError("must be numeric")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be a whole number of API calls (got {value})")
        return int(value)
    return value


UsageLimit = Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=MAX_COUNT)]


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    clinic_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    friendly_name: str = Field(min_length=1, max_length=MAX_NAME_LEN)
    usage_limit: UsageLimit | None = None


class UpdateKey(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    friendly_name: str | None = Field(None, min_length=1, max_length=MAX_NAME_LEN)
    usage_limit: UsageLimit | None = None


def _view(key: KeyOut) -> dict[str, Any]:
    return {"id": key.id, "friendly_name": key.name, "created": iso(key.created_at),
            "clinic_id": key.owner_id, "usage_limit": key.usage_limit, "root": key.root}


async def _caller(request: web.Request) -> Principal:
    raw = request.headers.get(KEY_HEADER)
    provider = request.headers.get(PROVIDER_HEADER)
    if not raw or not provider:
        raise DialectError(401, AUTH_FAILED)
    verdict = await verify(request.app[POOL], raw.strip(), now=datetime.now(UTC),
                           provider=provider.strip())
    if verdict.code is Code.INVALID_PROVIDER:
        raise DialectError(400, "Provider ID is invalid.")
    if not verdict.valid or verdict.record is None:
        raise DialectError(401, AUTH_FAILED)
    return Principal(KEY, verdict.record)


def _in_seed_words(exc: ApiError) -> Exception:
    """The core's refusals that the seed documents, in the seed's own words."""
    if exc.code == "owner_has_key":
        return DialectError(409, "Clinic already has an API key.")
    if exc.status == 404:
        return DialectError(404, "API key was not found.")
    if exc.code == "root_key_protected":
        return DialectError(403, "Cannot update another root key.")
    return exc


def _require_root(principal: Principal, message: str = ROOT_REQUIRED) -> None:
    if principal.key is None or not principal.key.root:
        raise DialectError(403, message)


async def _parse(request: web.Request, model: type[BaseModel], required: str) -> Any:
    """The body as ``model``, or the seed's 400 saying what is wrong with it: not JSON, a
    required field missing (``required``, the seed's sentence), or which value and why."""
    try:
        return model.model_validate_json(await request.read() or b"{}")
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise DialectError(400, f"{INVALID} The body is not valid JSON.") from None
        if first["type"] == "missing":
            raise DialectError(400, f"{INVALID} {required}") from None
        raise DialectError(400, f"{INVALID} {problem(exc)}.") from None


@handler
async def get(request: web.Request) -> web.Response:
    principal = await _caller(request)
    if request.query.get("list_all", "").lower() != "true":
        return json(_view(await core.read(request, principal, principal.own_key().id)))
    _require_root(principal, "Root API key is required for list_all=true.")
    return json([_view(k) async for k in core.every(request, principal)])


@handler
async def create(request: web.Request) -> web.Response:
    principal = await _caller(request)
    spec = await _parse(request, CreateKey, "clinic_id and friendly_name are required.")
    _require_root(principal)
    try:
        created = await core.create(request, principal, KeyCreate(
            owner_id=spec.clinic_id, name=spec.friendly_name,
            usage_limit=DEFAULT_USAGE_LIMIT if spec.usage_limit is None else spec.usage_limit),
            one_per_owner=True)
    except ApiError as exc:
        raise _in_seed_words(exc) from None
    return json({"apiKey": created.key, **{k: v for k, v in _view(created).items()
                                           if k != "id"}}, 201)


@handler
async def update(request: web.Request) -> web.Response:
    principal = await _caller(request)
    spec = await _parse(request, UpdateKey, "id is required.")
    _require_root(principal)
    changes: dict[str, Any] = {}
    if spec.friendly_name is not None:
        changes["name"] = spec.friendly_name
    if "usage_limit" in spec.model_fields_set:
        if spec.usage_limit is None:
            raise DialectError(400, f"{INVALID} usage_limit must be numeric when provided.")
        changes["usage_limit"] = spec.usage_limit
    try:
        target = await core.read(request, principal, spec.id)
        if not changes:
            return json(_view(target))
        updated = await core.update(request, principal, spec.id, KeyUpdate(**changes))
    except ApiError as exc:
        raise _in_seed_words(exc) from None
    return json(_view(updated))


@handler
async def delete(request: web.Request) -> web.Response:
    principal = await _caller(request)
    key_id = request.query.get("id")
    if not key_id:
        raise DialectError(400, "API key ID is missing.")
    _require_root(principal)
    try:
        await core.delete(request, principal, key_id)
    except ApiError as exc:
        raise _in_seed_words(exc) from None
    return json({"message": "API key deleted successfully"})


ROUTES = [
    ("GET", "/api/v1/api-key", get),
    ("POST", "/api/v1/api-key", create),
    ("PUT", "/api/v1/api-key", update),
    ("DELETE", "/api/v1/api-key", delete),
]
