"""Headers the gateway cannot forward unchanged are refused, never altered. aiohttp reads a
value that is not UTF-8 with surrogate escapes and its client drops those when sending
(``X-Name: caf\\xe9`` would reach the upstream as ``caf``); a Host that is not a host name
would reach the upstream as ``X-Forwarded-Host``."""

from __future__ import annotations

import re

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange

_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?")


def not_utf8(headers: tuple[tuple[bytes, bytes], ...]) -> str | None:
    """The name of the first header whose value is not UTF-8, if any."""
    for name, value in headers:
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return name.decode("ascii", "replace")
    return None


async def check(ex: Exchange, deps: Deps) -> None:
    name = not_utf8(ex.request.raw_headers)
    if name is not None:
        raise GatewayError("invalid_header", f"the {name} header is not valid UTF-8 and "
                           "cannot be forwarded unchanged; send ASCII or UTF-8")
    host = ex.request.headers.get("Host")
    if host and _HOST.fullmatch(host) is None:
        raise GatewayError("invalid_header", "the Host header is not a host name or address "
                           "with an optional port")
