"""Forwarding: the request goes upstream and the response comes back, both streamed, with
hop-by-hop headers dropped both ways and the gateway's own forwarding headers put in place of
anything the client claimed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade"})
# Client headers the gateway replaces with its own, or handles itself (Expect: the gateway
# answers 100-continue to the client; the upstream gets the body without asking).
REPLACED = frozenset({"forwarded", "x-real-ip", "x-request-id", "host", "expect"})
REPLACED_PREFIXES = ("x-keystile-", "x-forwarded-")


class _BodyTooLarge(Exception):
    pass


def _connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    return {token.strip().lower() for value in headers.getall("Connection", [])
            for token in value.split(",") if token.strip()}


def _end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str],
                also_drop: Iterable[str] = ()) -> CIMultiDict[str]:
    drop = HOP_BY_HOP | _connection_named(headers) | {h.lower() for h in also_drop}
    return CIMultiDict((name, value) for name, value in headers.items()
                       if name.lower() not in drop)


def upstream_headers(ex: Exchange) -> CIMultiDict[str]:
    request = ex.request
    credential = ex.matched.extractor.headers
    headers = _end_to_end(request.headers, also_drop=(*REPLACED, *credential))
    for name in [n for n in headers if n.lower().startswith(REPLACED_PREFIXES)]:
        headers.popall(name)
    if request.content_length is None and request.body_exists:
        headers.popall("Content-Length", None)
    key = ex.key
    if key is not None:
        headers["X-Keystile-Key-Id"] = key.id
        headers["X-Keystile-Org-Id"] = key.org_id
        headers["X-Keystile-Owner-Id"] = key.owner_id or ""
        headers["X-Keystile-Scopes"] = " ".join(key.scopes)
        headers["X-Keystile-Environment"] = key.environment
    headers["X-Request-Id"] = ex.request_id
    headers["X-Forwarded-For"] = request.remote or ""
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


async def _body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, never more than ``limit`` bytes."""
    seen = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise _BodyTooLarge
        yield chunk


async def forward(ex: Exchange, deps: Deps) -> web.StreamResponse:
    request, route = ex.request, ex.matched
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=route.timeout_s,
                                    sock_read=route.timeout_s)
    data = _body(request, deps.settings.max_body_bytes) if request.body_exists else None
    try:
        upstream = await deps.session.request(
            request.method, route.upstream_url(ex.path, ex.query),
            headers=upstream_headers(ex), data=data, allow_redirects=False, timeout=timeout)
    except _BodyTooLarge:
        raise GatewayError("payload_too_large", f"the body is larger than "
                           f"{deps.settings.max_body_bytes} bytes") from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise GatewayError("upstream_timeout") from None
    except aiohttp.ClientError as exc:
        if isinstance(exc.__cause__, _BodyTooLarge) or isinstance(exc.__context__,
                                                                   _BodyTooLarge):
            raise GatewayError("payload_too_large", f"the body is larger than "
                               f"{deps.settings.max_body_bytes} bytes") from None
        log.info("upstream unavailable", extra={"request_id": ex.request_id,
                                                "error": type(exc).__name__})
        raise GatewayError("upstream_unavailable") from None
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=_end_to_end(upstream.headers))
        response.headers["X-Request-Id"] = ex.request_id
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Too late for an error response: cut the connection so the client sees it.
            log.warning("upstream failed mid-response", extra={"request_id": ex.request_id,
                                                              "error": type(exc).__name__})
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
    return response
