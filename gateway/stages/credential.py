"""Take the key from where the route says clients send it."""

from __future__ import annotations

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange


async def extract(ex: Exchange, deps: Deps) -> None:
    route = ex.matched
    if route.auth == "none":
        return
    ex.raw_key = route.extractor.extract(ex.request.headers)
    if ex.raw_key is None and route.auth == "required":
        raise GatewayError("missing_key",
                           f"send your API key in the {route.extractor.headers[0]} header")
