"""Normalise the path once and find its route; the method must be one the route takes."""

from __future__ import annotations

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.paths import UnsafePath, normalise


async def resolve(ex: Exchange, deps: Deps) -> None:
    target, _, ex.query = ex.request.raw_path.partition("?")
    if "#" in ex.query:
        # The parser lets a fragment through; the upstream request would lose it.
        raise GatewayError("invalid_path", "the request target is not acceptable: a '#' "
                           "fragment is never sent to a server; percent-encode it as '%23'")
    try:
        ex.path = normalise(target)
    except UnsafePath as exc:
        raise GatewayError("invalid_path", f"the request path is not acceptable: {exc}") from None
    route = deps.routes.match(ex.path)
    if route is None:
        raise GatewayError("route_not_found")
    if route.methods is not None and ex.request.method not in route.methods:
        allowed = ", ".join(sorted(route.methods))
        raise GatewayError("method_not_allowed",
                           f"{ex.request.method} is not allowed here; use {allowed}",
                           headers={"Allow": allowed})
    ex.route = route
