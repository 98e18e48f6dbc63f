"""Take the key from where the route says clients send it."""

from __future__ import annotations

from gateway.credentials import KEY_QUERY_PARAMETERS
from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange


async def extract(ex: Exchange, deps: Deps) -> None:
    route = ex.matched
    if route.auth == "none":
        return
    ex.raw_key = route.extractor.extract(ex.request.headers)
    ex.provider = route.extractor.provider(ex.request.headers)
    if ex.raw_key is None and route.extractor.refuse_query_keys and any(
            name in ex.request.query for name in KEY_QUERY_PARAMETERS):
        raise GatewayError("missing_key", "API keys are not accepted in the query string "
                           f"(it ends up in logs); send it in the "
                           f"{route.extractor.headers[0]} header")
    if ex.raw_key is None and route.auth == "required":
        raise GatewayError("missing_key", f"send your API key {route.extractor.how_to_send()}")
