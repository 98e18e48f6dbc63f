"""Who is calling the admin API, and what they may do.

The operator token manages everything. A root key manages the keys of its own organisation:
itself and non-root keys, never another root key. A sub key may only read itself. Keys of
another organisation are reported as not found, so their existence does not leak."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from admin_api.errors import BadRequest, Forbidden, NotFound, Unauthorized
from admin_api.models import PROVIDER_ID_PATTERN
from admin_api.repository import orgs
from admin_api.repository.audit import Actor
from gateway import keyformat, scopes
from gateway.database import Queryable
from gateway.keyrecord import KeyRecord, fetch_by_hash
from gateway.verification import Code, check_state

OPERATOR = "operator"
PROVIDER_RE = re.compile(PROVIDER_ID_PATTERN)
KEY = "key"

_STATE_ERRORS = {
    Code.KEY_EXPIRED: (Unauthorized, "this key has expired; ask for a new key"),
    Code.KEY_REVOKED: (Unauthorized, "this key has been revoked; ask for a new key"),
    Code.KEY_PAUSED: (Forbidden, "this key is paused; resume it or use another key"),
}


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str
    key: KeyRecord | None = None

    @property
    def is_operator(self) -> bool:
        return self.kind == OPERATOR

    @property
    def actor(self) -> Actor:
        return Actor(OPERATOR, None) if self.key is None else Actor(KEY, self.key.id)

    def own_key(self) -> KeyRecord:
        if self.key is None:
            raise BadRequest("the operator token has no key record of its own; "
                             "call this with X-API-Key", code="no_key_identity")
        return self.key


PRINCIPAL = web.RequestKey("principal", Principal)


async def authenticate(request: web.Request, conn: Queryable,
                       operator_token: str | None) -> Principal:
    authorization = request.headers.get("Authorization")
    raw_key = request.headers.get("X-API-Key")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <operator token>'",
                               code="invalid_credentials")
        if operator_token is None or not hmac.compare_digest(
                token.strip().encode("utf-8", "surrogateescape"), operator_token.encode()):
            raise Unauthorized("the bearer token is not the operator token",
                               code="invalid_credentials")
        return Principal(OPERATOR)
    if raw_key is None:
        raise Unauthorized("send 'Authorization: Bearer <operator token>' or "
                           "'X-API-Key: <root key>'", code="missing_key")
    return Principal(KEY, await _authenticate_key(request, conn, raw_key.strip()))


async def _authenticate_key(request: web.Request, conn: Queryable,
                            raw: str) -> KeyRecord:
    invalid = Unauthorized("the API key is not valid", code="invalid_key")
    if not keyformat.is_well_formed(raw):
        raise invalid
    record = await fetch_by_hash(conn, keyformat.hash_key(raw))
    provider = request.headers.get("X-Provider")
    if provider is not None:
        org = await orgs.get_by_provider(conn, provider) if PROVIDER_RE.match(provider) else None
        if org is None:
            raise BadRequest("X-Provider names no organisation; check the provider id",
                             code="invalid_provider")
        if record is not None and record.org_id != org["id"]:
            raise invalid
    if record is None:
        raise invalid
    code = check_state(record, datetime.now(UTC))
    if code in _STATE_ERRORS:
        error, message = _STATE_ERRORS[code]
        raise error(message, code=code.value)
    return record


def require_operator(principal: Principal) -> None:
    if not principal.is_operator:
        raise Forbidden("only the operator token may manage organisations",
                        code="operator_required")


def require_manager(principal: Principal) -> None:
    """Operator or a root key; sub keys only read themselves."""
    if principal.key is not None and not principal.key.root:
        raise Forbidden("a sub key may only read itself (GET /v1/keys/self); "
                        "use a root key or the operator token", code="root_key_required")


def org_scope(principal: Principal, org_id: str | None) -> str | None:
    """The organisation a request acts on: a root key's own; the operator's choice."""
    if principal.key is None:
        return org_id
    if org_id is not None and org_id != principal.key.org_id:
        raise Forbidden("a root key acts only on its own organisation; leave org_id out",
                        code="forbidden_org")
    return principal.key.org_id


def visible(principal: Principal, key: KeyRecord | None, key_id: str) -> KeyRecord:
    """The key if the caller may read it, else 404 — the same answer as for an unknown id."""
    caller = principal.key
    if key is None or (caller is not None and (
            key.org_id != caller.org_id or (not caller.root and key.id != caller.id))):
        raise NotFound(f"no key {key_id}", code="key_not_found")
    return key


def require_modify(principal: Principal, key: KeyRecord) -> None:
    caller = principal.key
    if caller is None:
        return
    require_manager(principal)
    if key.root and key.id != caller.id:
        raise Forbidden("a root key cannot change another root key; use the operator token",
                        code="root_key_protected")


def require_grantable(principal: Principal, wanted: list[str]) -> None:
    """A key can only hand out scopes it holds itself."""
    if principal.key is None:
        return
    lacking = scopes.missing(principal.key.scopes, wanted)
    if lacking:
        raise Forbidden(f"cannot grant scopes the calling key does not hold: "
                        f"{', '.join(lacking)}", code="insufficient_scope")
