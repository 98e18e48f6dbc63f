"""Open Dental's developer portal (seeds/opendental-developer-portal-apikeys.txt):
``/apikeys`` GET / POST / PUT, authenticated by ``Authorization: ODFHIR
{DeveloperKey}/{DeveloperPortalKey}`` — the organisation's provider_id and one of its root
keys. A CustomerKey is 16 upper-case alphanumerics. Its contract lists customer keys in
clear, so they are *recoverable*: the secret is kept encrypted (AES-GCM,
KEYSTILE_ENCRYPTION_KEY) and decrypted for the listing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from admin_api.auth import KEY, Principal
from admin_api.caps import MAX_ID_LEN, MAX_RAW_KEY_LEN
from admin_api.dialects.common import DialectError, handler_in, json, problem, wording
from admin_api.errors import REQUEST_ID, ErrorShape
from admin_api.handlers import keys as core
from admin_api.models import KeyCreate, KeyOut, KeyUpdate
from admin_api.repository import keys as key_rows
from admin_api.state import POOL, SETTINGS
from gateway.keyformat import hash_key, is_customer_key
from gateway.secretbox import SecretBoxError, open_, parse_key
from gateway.verification import Code, verify

log = logging.getLogger(__name__)

ROOT = "/apikeys"  # every path of the dialect, and its errors' shape
MARKER = "opendental"  # metadata flag of the keys this dialect issued
NO_DATE = "0001-01-01"
NO_DATETIME = "0001-01-01 00:00:00"


def _error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """The seed's "<Status> (with explanation)": every message starts with its status word
    ("BadRequest: …", "NotFound: …", "MethodNotAllowed: …")."""
    status, message = wording(request, status, code, message)
    word = HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    if not message.startswith(word + ":"):
        message = f"{word}: {message}"
    return json({"error": message, "request_id": request[REQUEST_ID]}, status)


ERROR: ErrorShape = _error
handler = handler_in(ERROR)


class UpdateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    CustomerKey: str = Field(min_length=1, max_length=MAX_RAW_KEY_LEN)
    KeyStatus: Literal["Enabled", "DisabledByDeveloper"] | None = None
    DevRefId: str | None = Field(None, max_length=MAX_ID_LEN)


async def _caller(request: web.Request) -> Principal:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    developer, sep, portal_key = credential.strip().partition("/")
    if scheme.upper() != "ODFHIR" or not sep or not developer or not portal_key:
        raise DialectError(401, "Unauthorized: send 'Authorization: ODFHIR "
                           "{DeveloperKey}/{DeveloperPortalKey}'")
    verdict = await verify(request.app[POOL], portal_key, now=datetime.now(UTC),
                           provider=developer)
    if verdict.code is Code.INVALID_PROVIDER:
        raise DialectError(401, "Unauthorized: unknown DeveloperKey")
    if not verdict.valid or verdict.record is None or not verdict.record.root:
        raise DialectError(401, "Unauthorized: the DeveloperPortalKey is not valid for this "
                           "DeveloperKey")
    return Principal(KEY, verdict.record)


def _view(request: web.Request, key: KeyOut, sealed: bytes | None) -> dict[str, Any]:
    customer_key = ""
    if sealed is not None:
        try:
            customer_key = open_(_box(request), key.id, sealed)
        except SecretBoxError:
            raise DialectError(500, "the configured encryption key cannot open the stored "
                               "customer keys; restore the key they were sealed with") from None
    disabled = key.metadata.get("disabled_on")
    return {
        "CustomerKey": customer_key,
        "KeyStatus": "Enabled" if key.status == "active" else "DisabledByDeveloper",
        "DateCreated": key.created_at.astimezone(UTC).date().isoformat(),
        "DateDisabled": disabled if key.status != "active" and disabled else NO_DATE,
        "DateTimeAssigned": (key.first_used_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
                             if key.first_used_at else NO_DATETIME),
        "DevRefId": key.metadata.get("dev_ref_id", ""),
    }


def _box(request: web.Request) -> bytes:
    text = request.app[SETTINGS].encryption_key
    assert text is not None  # checked when the dialect is mounted
    return parse_key(text)


@handler
async def list_keys(request: web.Request) -> web.Response:
    principal = await _caller(request)
    found: list[dict[str, Any]] = []
    async for key in core.every(request, principal, root=False):
        if not (key.recoverable and key.metadata.get(MARKER)):
            continue  # only this dialect's customer keys are ever revealed
        sealed = await key_rows.sealed_secret(request.app[POOL], key.id)
        try:
            found.append(_view(request, key, sealed))
        except DialectError:
            log.error("customer key %s cannot be opened with the configured encryption "
                      "key; left out of the listing", key.id)
    return json(found)


@handler
async def create(request: web.Request) -> web.Response:
    principal = await _caller(request)
    created = await core.create(request, principal,
                                KeyCreate(recoverable=True, metadata={MARKER: True}),
                                customer_style=True)
    view = _view(request, created, None)
    return json({**view, "CustomerKey": created.key}, 201)


@handler
async def update(request: web.Request) -> web.Response:
    principal = await _caller(request)
    try:
        spec = UpdateKey.model_validate_json(await request.read() or b"{}")
    except ValidationError as exc:
        raise DialectError(400, f"BadRequest: {problem(exc)}") from None
    if not is_customer_key(spec.CustomerKey):
        raise DialectError(400, "BadRequest: CustomerKey must be 16 upper-case letters or "
                           "digits")
    assert principal.key is not None
    key_id = await key_rows.id_by_secret(request.app[POOL], principal.key.org_id,
                                         hash_key(spec.CustomerKey))
    if key_id is None:
        raise DialectError(404, "NotFound: no such CustomerKey for this developer")
    key = await core.read(request, principal, key_id)
    if not key.metadata.get(MARKER):
        raise DialectError(404, "NotFound: no such CustomerKey for this developer")
    metadata = dict(key.metadata)
    if spec.DevRefId is not None:
        metadata["dev_ref_id"] = spec.DevRefId
    if spec.KeyStatus == "DisabledByDeveloper" and key.status == "active":
        metadata["disabled_on"] = datetime.now(UTC).date().isoformat()
        key = await core.set_status(request, principal, key_id, "key.pause", "paused")
    elif spec.KeyStatus == "Enabled" and key.status == "paused":
        key = await core.set_status(request, principal, key_id, "key.resume", "active")
    if metadata != key.metadata:
        key = await core.update(request, principal, key_id, KeyUpdate(metadata=metadata))
    return json(_view(request, key, await key_rows.sealed_secret(request.app[POOL], key_id)))


ROUTES = [
    ("GET", "/apikeys", list_keys),
    ("POST", "/apikeys", create),
    ("PUT", "/apikeys", update),
]
