"""The console's session: after a login, the browser holds a random session id in a cookie
that scripts cannot read (``HttpOnly``), other sites' requests do not carry
(``SameSite=Strict``) and only the console's own paths receive (``Path=/console``: the
console calls the admin API under ``/console/api``, so neither the API's other paths nor a
gateway on the same host name ever see it). PostgreSQL keeps what the id stands for
(``console_sessions``), so logging out ends it everywhere, and the credential itself is
never in the cookie.

A request that changes anything with the session must also carry the ``X-Keystile-Console``
header, which a cross-site form cannot send and a cross-site script cannot send without a
CORS preflight this API never grants, and an ``Origin``, when the browser sends one, of this
very host."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from aiohttp import web

from admin_api.errors import Forbidden, Unauthorized
from gateway.database import Queryable

COOKIE = "keystile_console"
PATH = "/console"
API = PATH + "/api"  # the admin API again, for the console's pages: the only paths a session opens
CSRF_HEADER = "X-Keystile-Console"
LIFETIME = timedelta(hours=12)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Held:
    """Who a live session belongs to: ``operator`` with the SHA-256 of the token it logged in
    with, or ``key`` with the hash of the secret it logged in with."""
    kind: str
    secret_hash: bytes


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).digest()


def guard(request: web.Request) -> None:
    """Refuses a session's change that did not come from the console itself."""
    if request.method in _SAFE:
        return
    if request.headers.get(CSRF_HEADER) != "1":
        raise Forbidden(f"a change made with the console's session must send the header "
                        f"'{CSRF_HEADER}: 1' (it keeps other sites from acting for you); "
                        "scripts should call the API with Authorization or X-API-Key instead",
                        code="csrf_check_failed")
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise Forbidden("this request came from another site's page; use the console "
                        "served by this admin API", code="csrf_check_failed")


async def held(request: web.Request, conn: Queryable) -> Held | None:
    """The session the request carries, if it carries one; 401 if it has ended."""
    session_id = request.cookies.get(COOKIE)
    if session_id is None:
        return None
    guard(request)
    row = await conn.fetchrow(
        "SELECT kind, secret_hash FROM console_sessions WHERE id_hash = $1 AND expires_at > now()",
        _digest(session_id))
    if row is None:
        raise Unauthorized("the console session has ended; log in again", code="invalid_session")
    return Held(row["kind"], bytes(row["secret_hash"]))


async def open_session(conn: Queryable, request: web.Request, response: web.StreamResponse,
                       held: Held) -> None:
    """Records a new session and sets its cookie: no expiry, so the browser forgets it when
    it closes; the row ends it after ``LIFETIME`` in any case."""
    session_id = secrets.token_urlsafe(32)
    await conn.execute("DELETE FROM console_sessions WHERE expires_at <= now()")
    await conn.execute(
        """INSERT INTO console_sessions (id_hash, kind, secret_hash, expires_at)
        VALUES ($1, $2, $3, now() + $4)""", _digest(session_id), held.kind, held.secret_hash,
        LIFETIME)
    response.set_cookie(COOKIE, session_id, path=PATH, httponly=True, samesite="Strict",
                        secure=request.secure)


async def close_session(conn: Queryable, request: web.Request,
                        response: web.StreamResponse) -> None:
    session_id = request.cookies.get(COOKIE)
    if session_id is not None:
        await conn.execute("DELETE FROM console_sessions WHERE id_hash = $1",
                           _digest(session_id))
    response.del_cookie(COOKIE, path=PATH)
