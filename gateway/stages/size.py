"""Header and body size limits, checked before anything else (431 / 413)."""

from __future__ import annotations

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange


async def check(ex: Exchange, deps: Deps) -> None:
    raw = ex.request.raw_headers
    limits = deps.settings
    if len(raw) > limits.max_header_count:
        raise GatewayError("headers_too_large",
                           f"{len(raw)} headers sent; at most {limits.max_header_count} allowed")
    size = sum(len(name) + len(value) + 4 for name, value in raw)
    if size > limits.max_header_bytes:
        raise GatewayError("headers_too_large",
                           f"{size} bytes of headers sent; at most {limits.max_header_bytes}")
    length = ex.request.content_length
    if length is not None and length > limits.max_body_bytes:
        raise GatewayError("payload_too_large",
                           f"the body has {length} bytes; at most {limits.max_body_bytes}")
