"""Who is calling the admin API, and what they may do.

The operator token manages everything. A root key manages the keys of its own organisation:
itself and non-root keys, never another root key. A sub key may only read itself. Keys of
another organisation are reported as not found, so their existence does not leak."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from admin_api import session, tightening
from admin_api.errors import ApiError, BadRequest, Forbidden, NotFound, Unauthorized
from admin_api.repository.audit import Actor
from gateway import keyformat, scopes
from gateway.database import Queryable
from gateway.keyrecord import KeyRecord
from gateway.verification import PUBLIC_ERRORS, Verdict, verify, verify_digest

OPERATOR = "operator"
KEY = "key"
# What each limit a key may tighten on itself means by "tighter", for the 403's message.
_TIGHTER = {
    "expires_at": "set an earlier time",
    "usage_limit": "set a lower limit",
    "quota": "set no higher a limit over the same period, or a week's or month's for a day's",
    "rate_limits": "keep every current window or replace it with a stricter one",
}

@dataclass(frozen=True, slots=True)
class Principal:
    kind: str
    key: KeyRecord | None = None
    on_behalf_of: Actor | None = None  # a dialect's own user, acting through the core

    @property
    def is_operator(self) -> bool:
        return self.kind == OPERATOR

    @property
    def actor(self) -> Actor:
        if self.on_behalf_of is not None:
            return self.on_behalf_of
        return Actor(OPERATOR, None) if self.key is None else Actor(KEY, self.key.id)

    def own_key(self) -> KeyRecord:
        if self.key is None:
            raise BadRequest("the operator token has no key record of its own; "
                             "call this with X-API-Key", code="no_key_identity")
        return self.key


PRINCIPAL = web.RequestKey("principal", Principal)


async def authenticate(request: web.Request, conn: Queryable,
                       operator_token: str | None) -> Principal:
    """The operator (``Authorization: Bearer``) or a key (``X-API-Key``, optionally with
    ``X-Provider``) — or, with neither header, under the console's paths, the console's
    session; anything else is a 401 that says what to send."""
    authorization = request.headers.get("Authorization", "")
    raw_key = request.headers.get("X-API-Key")
    if not authorization and raw_key is None and request.path.startswith(session.API + "/"):
        held = await session.held(request, conn)
        if held is not None:
            return await session_principal(conn, operator_token, held)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return operator(token, operator_token)
    if raw_key is not None:
        return await key_principal(conn, raw_key, request.headers.get("X-Provider"))
    if authorization:
        raise Unauthorized("Authorization must be 'Bearer <operator token>'",
                           code="invalid_credentials")
    raise Unauthorized("send 'Authorization: Bearer <operator token>' or "
                       "'X-API-Key: <root key>'", code="missing_key")


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()


def is_operator_token(token: str, operator_token: str | None) -> bool:
    return operator_token is not None and hmac.compare_digest(
        token_hash(token), token_hash(operator_token))


def operator(token: str, operator_token: str | None) -> Principal:
    if not is_operator_token(token, operator_token):
        raise Unauthorized("the bearer token is not the operator token",
                           code="invalid_credentials")
    return Principal(OPERATOR)


def _key_or_refusal(verdict: Verdict) -> Principal:
    if not verdict.valid or verdict.record is None:
        status, message = PUBLIC_ERRORS[verdict.code]
        raise ApiError(message, code=verdict.code.value, status=status)
    return Principal(KEY, verdict.record)


async def key_principal(conn: Queryable, raw_key: str, provider: str | None) -> Principal:
    return _key_or_refusal(await verify(conn, raw_key.strip(), now=datetime.now(UTC),
                                        provider=provider))


async def session_principal(conn: Queryable, operator_token: str | None,
                            held: session.Held) -> Principal:
    """Checked again on every request: a changed operator token, or a key revoked, paused,
    expired or rotated since the login, ends the session's access."""
    if held.kind == OPERATOR:
        if operator_token is None or not hmac.compare_digest(held.secret_hash,
                                                             token_hash(operator_token)):
            raise Unauthorized("the operator token has changed since this console session "
                               "began; log in again", code="invalid_session")
        return Principal(OPERATOR)
    return _key_or_refusal(await verify_digest(conn, held.secret_hash, now=datetime.now(UTC)))


def require_operator(principal: Principal) -> None:
    if not principal.is_operator:
        raise Forbidden("only the operator token may manage organisations",
                        code="operator_required")


def require_manager(principal: Principal) -> None:
    """Operator or a root key; sub keys only read themselves."""
    if principal.key is not None and not principal.key.root:
        raise Forbidden("a sub key may only read itself (GET /v1/keys/self); "
                        "use a root key or the operator token", code="root_key_required")


def org_scope(principal: Principal, org_id: str | None, *, in_path: bool = False
              ) -> str | None:
    """The organisation a request acts on: a root key's own; the operator's choice.
    ``in_path``: the id is part of the path (it cannot be left out)."""
    if principal.key is None:
        return org_id
    if org_id is not None and org_id != principal.key.org_id:
        fix = ("use its id in the path (GET /v1/keys/self shows it)" if in_path
               else "leave org_id out")
        raise Forbidden(f"a root key acts only on its own organisation; {fix}",
                        code="forbidden_org")
    return principal.key.org_id


def visible(principal: Principal, key: KeyRecord | None, key_id: str) -> KeyRecord:
    """The key if the caller may read it, else 404 — the same answer as for an unknown id."""
    caller = principal.key
    if key is None or (caller is not None and (
            key.org_id != caller.org_id or (not caller.root and key.id != caller.id))):
        shown = key_id if keyformat.is_id("key", key_id) else "with that id"
        raise NotFound(f"no key {shown}", code="key_not_found")
    return key


def require_modify(principal: Principal, key: KeyRecord) -> None:
    """A root key changes itself and the non-root keys of its organisation whose scopes it
    holds itself — otherwise rotating a wider key would hand it that key's powers."""
    caller = principal.key
    if caller is None or key.id == caller.id:
        return
    require_manager(principal)
    if key.root:
        raise Forbidden("a root key cannot change another root key; use the operator token",
                        code="root_key_protected")
    lacking = scopes.missing(caller.scopes, key.scopes)
    if lacking:
        raise Forbidden(f"this key has scopes the calling key does not hold "
                        f"({', '.join(lacking)}); use the operator token",
                        code="insufficient_scope")


def _is_self(principal: Principal, key: KeyRecord) -> bool:
    return principal.key is not None and key.id == principal.key.id


def require_not_own_limits(principal: Principal, key: KeyRecord,
                           wanted: Mapping[str, Any]) -> None:
    """A key may rename itself, narrow its scopes and tighten its own limits, but not raise
    them (``wanted``: the new values of the fields being changed)."""
    if not _is_self(principal, key):
        return
    if "owner_id" in wanted and wanted["owner_id"] != key.owner_id:
        raise Forbidden("owner_id: a key cannot move itself to another owner: that would raise "
                        "its limits, leaving those its owner shares; ask the operator",
                        code="own_limits_protected")
    current = {"expires_at": key.expires_at, "usage_limit": key.usage_limit,
               "quota": key.quota, "rate_limits": key.rate_limits}
    field = tightening.raised(current, wanted)
    if field is not None:
        raise Forbidden(f"{field}: this change would raise the calling key's own limit; a key "
                        f"may only tighten its own limits ({field}: {_TIGHTER[field]}); ask "
                        "the operator to raise it", code="own_limits_protected")


def require_shadow_allowed(principal: Principal, wanted: Mapping[str, Any]) -> None:
    """Shadow mode lifts every limit a key is held to — its owner's and its organisation's
    shared windows too, which only the operator sets — so only the operator turns it on."""
    if wanted.get("shadow_limits") and principal.key is not None:
        raise Forbidden("shadow_limits: only the operator may put a key in shadow mode (it "
                        "lifts the key's limits, its owner's and organisation's included); a "
                        "root key may turn it off", code="operator_required")


def require_not_own_owner_limits_raised(principal: Principal, org_id: str, owner_id: str,
                                        current: list[dict[str, Any]],
                                        wanted: list[dict[str, Any]]) -> None:
    """The rate limits a key's owner shares are that key's limits too: the key may tighten
    them, never raise or remove them."""
    caller = principal.key
    if caller is None or caller.org_id != org_id or caller.owner_id != owner_id:
        return
    if not tightening.rate_limits_kept(current, wanted):
        raise Forbidden("rate_limits: this change would raise the limits the calling key's "
                        "own owner shares; a key may only tighten them (keep every current "
                        "window or replace it with a stricter one); ask the operator",
                        code="own_limits_protected")


def require_not_own_usage_lowered(principal: Principal, key: KeyRecord, op: str) -> None:
    """A key may add to its own usage count (spending its allowance faster), never take
    from it."""
    if _is_self(principal, key) and op != "increment":
        raise Forbidden(f"op: a key cannot {op} its own usage count, which would lift its "
                        "usage_limit; it may only increment it; ask the operator",
                        code="own_limits_protected")


def require_grantable(principal: Principal, wanted: list[str]) -> None:
    """A key can only hand out scopes it holds itself."""
    if principal.key is None:
        return
    lacking = scopes.missing(principal.key.scopes, wanted)
    if lacking:
        raise Forbidden(f"cannot grant scopes the calling key does not hold: "
                        f"{', '.join(lacking)}", code="insufficient_scope")
