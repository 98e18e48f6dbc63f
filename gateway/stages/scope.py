"""The key must hold the scopes the route requires for this method."""

from __future__ import annotations

from gateway import scopes
from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.verification import Code


async def check(ex: Exchange, deps: Deps) -> None:
    if ex.key is None:
        return
    required = ex.matched.required_scopes(ex.request.method)
    if required is None:
        raise GatewayError(Code.INSUFFICIENT_SCOPE,
                           f"no scope grants {ex.request.method} on {ex.matched.prefix}")
    lacking = scopes.missing(ex.key.scopes, required)
    if lacking:
        raise GatewayError(Code.INSUFFICIENT_SCOPE,
                           f"this key lacks the scope(s) {', '.join(lacking)} for "
                           f"{ex.request.method} {ex.matched.prefix}")
