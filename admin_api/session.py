"""The console's session: the credential an operator entered once, which the browser holds
in an ``HttpOnly; SameSite=Strict`` cookie until it closes (or until logging out), and the
guard that keeps other sites from acting with it.

The cookie is never readable by scripts and never sent by another site's requests
(SameSite=Strict). On top of that, a request that changes anything with it must carry the
``X-Keystile-Console`` header, which a cross-site form cannot send and a cross-site script
cannot send without a CORS preflight this API never grants, and an ``Origin``, when the
browser sends one, of this very host."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from admin_api.errors import Forbidden, Unauthorized

COOKIE = "keystile_console"
CSRF_HEADER = "X-Keystile-Console"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_KINDS = {"operator": "o", "key": "k"}


@dataclass(frozen=True, slots=True)
class Credential:
    kind: str  # operator | key
    secret: str
    provider: str | None = None


def _encode(credential: Credential) -> str:
    secret = base64.urlsafe_b64encode(credential.secret.encode()).decode().rstrip("=")
    return f"{_KINDS[credential.kind]}.{secret}"


def _decode(value: str) -> Credential | None:
    tag, _, secret = value.partition(".")
    kind = next((k for k, t in _KINDS.items() if t == tag), None)
    try:
        text = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return Credential(kind, text) if kind is not None and text else None


def guard(request: web.Request) -> None:
    """Refuses a cookie-authenticated change that did not come from the console itself."""
    if request.method in _SAFE:
        return
    if request.headers.get(CSRF_HEADER) != "1":
        raise Forbidden(f"a change made with the console's session must send the header "
                        f"'{CSRF_HEADER}: 1' (it keeps other sites from acting for you); "
                        "scripts should send Authorization or X-API-Key instead",
                        code="csrf_check_failed")
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise Forbidden("this request came from another site's page; use the console "
                        "served by this admin API", code="csrf_check_failed")


def held(request: web.Request) -> Credential | None:
    """The session's credential, if the request carries the console's cookie."""
    value = request.cookies.get(COOKIE)
    if value is None:
        return None
    guard(request)
    credential = _decode(value)
    if credential is None:
        raise Unauthorized("the console session is not valid; log in again",
                           code="invalid_session")
    return credential


def keep(request: web.Request, response: web.StreamResponse, credential: Credential) -> None:
    """Sets the session cookie: no expiry, so the browser forgets it when it closes."""
    response.set_cookie(COOKIE, _encode(credential), path="/", httponly=True,
                        samesite="Strict", secure=request.secure)


def forget(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")
