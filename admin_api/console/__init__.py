"""The ops console, served at ``/console`` by the admin API: static pages (no build step)
that call the same admin API as everyone else — under ``/console/api``, where the session
entered once (``admin_api.session``) stands in for the credential."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from aiohttp import web
from pydantic import StringConstraints

from admin_api import inputs, session
from admin_api.auth import (
    KEY,
    OPERATOR,
    Principal,
    is_operator_token,
    key_principal,
    session_principal,
    token_hash,
)
from admin_api.errors import ApiError, Forbidden, Unauthorized
from admin_api.models import Input
from admin_api.state import POOL, SETTINGS
from gateway import keyformat
from gateway.verification import Code

STATIC = Path(__file__).parent / "static"
PATH = session.PATH
# Scripts, styles and requests only from this origin; no inline code, no framing.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


class Login(Input):
    credential: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


def _who(principal: Principal) -> dict[str, object]:
    if principal.key is None:
        return {"kind": OPERATOR}
    key = principal.key
    return {"kind": KEY, "key_id": key.id, "org_id": key.org_id, "name": key.name,
            "prefix": key.prefix}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def log_in(request: web.Request) -> web.Response:
    session.guard(request)  # a login is a change too: another site must not make one
    body = await inputs.body(request, Login)
    pool, token = request.app[POOL], request.app[SETTINGS].admin.token
    if is_operator_token(body.credential, token):
        principal, held = Principal(OPERATOR), session.Held(OPERATOR, token_hash(body.credential))
    else:
        try:
            principal = await key_principal(pool, body.credential, None)
        except ApiError as exc:
            if exc.code != Code.INVALID_KEY.value:
                raise  # expired, revoked, paused: its own message says so
            raise Unauthorized("that is neither the operator token nor a key Keystile knows; "
                               "paste the whole token or root key", code="invalid_credentials"
                               ) from None
        if principal.key is None or not principal.key.root:
            raise Forbidden("the console needs the operator token or a root key; this key is "
                            "a sub key, which may only read itself", code="root_key_required")
        held = session.Held(KEY, keyformat.hash_key(body.credential.strip()))
    response = web.json_response(_who(principal))
    await session.open_session(pool, request, response, held)
    return response


async def who(request: web.Request) -> web.Response:
    held = await session.held(request, request.app[POOL])
    if held is None:
        raise Unauthorized("not logged in to the console", code="missing_session")
    principal = await session_principal(request.app[POOL], request.app[SETTINGS].admin.token,
                                        held)
    return web.json_response(_who(principal))


async def log_out(request: web.Request) -> web.Response:
    session.guard(request)
    response = web.Response(status=204)
    await session.close_session(request.app[POOL], request, response)
    return response


async def _policy(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == PATH or request.path.startswith(PATH + "/"):
        response.headers["Content-Security-Policy"] = POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"


# Outside the API's route table and its OpenAPI document: pages for browsers, and the
# session they keep (the static files are a further GET route, PATH + "/static").
ROUTES = (("GET", PATH, index), ("GET", PATH + "/", index), ("POST", PATH + "/session", log_in),
          ("GET", PATH + "/session", who), ("DELETE", PATH + "/session", log_out))


def mount(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_static(PATH + "/static", STATIC)
    app.on_response_prepare.append(_policy)
