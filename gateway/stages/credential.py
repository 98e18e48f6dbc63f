"""Take the key from where the route says clients send it, and from nowhere else: a key in
the query string or the path ends up in logs (the upstream's, proxies', browser history), so
a request carrying one is refused before anything is looked up and never forwarded."""

from __future__ import annotations

from gateway.credentials import KEY_QUERY_PARAMETERS, key_in, key_in_query
from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange

_NOT_IN_QUERY = "API keys are not accepted in the query string (it ends up in logs)"


async def extract(ex: Exchange, deps: Deps) -> None:
    route = ex.matched
    if route.auth != "none":
        ex.raw_key = route.extractor.extract(ex.request.headers)
        ex.provider = route.extractor.provider(ex.request.headers)
    if ex.query and key_in_query(ex.query, ex.raw_key):
        raise GatewayError("key_in_query", f"{_NOT_IN_QUERY}; send the key only "
                           f"{route.extractor.how_to_send()}")
    if key_in(ex.path, ex.raw_key):  # the path is decoded and canonical: one look
        raise GatewayError("key_in_path", "API keys are not accepted in the path (it ends up "
                           f"in logs); send the key only {route.extractor.how_to_send()}")
    if ex.raw_key is None and route.auth == "required":
        if any(name in ex.request.query for name in KEY_QUERY_PARAMETERS):
            raise GatewayError("missing_key", f"{_NOT_IN_QUERY}; send your API key "
                               f"{route.extractor.how_to_send()}")
        raise GatewayError("missing_key", f"send your API key {route.extractor.how_to_send()}")
