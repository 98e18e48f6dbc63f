"""Forwarding: the request goes upstream and the response comes back, both streamed, with
hop-by-hop headers dropped both ways and the gateway's own forwarding headers put in place of
anything the client claimed."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import keyformat
from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.metrics import upstream_latency
from gateway.stages import limits
from gateway.stages.headers import not_utf8

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade"})
# Client headers the gateway replaces with its own, or handles itself (Expect: the gateway
# answers 100-continue once the request has passed; the upstream gets the body unasked).
REPLACED = frozenset({"forwarded", "x-real-ip", "x-request-id", "host", "expect"})
REPLACED_PREFIXES = ("x-keystile-", "x-forwarded-")
# Headers that make some frameworks act on another method or path than the one checked.
OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override",
                       "x-original-url", "x-rewrite-url"})


CLIENT_CLOSED = "client_closed"  # as nginx's 499: nobody was left to answer


class _BodyTooLarge(Exception):
    pass


def _connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    return {token.strip().lower() for value in headers.getall("Connection", [])
            for token in value.split(",") if token.strip()}


@functools.lru_cache(maxsize=256)
def _dropped(also: tuple[str, ...]) -> frozenset[str]:
    return HOP_BY_HOP | {h.lower() for h in also}


def _end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str],
                also_drop: tuple[str, ...] = (), own_prefix: str | None = None
                ) -> CIMultiDict[str]:
    """``headers`` without hop-by-hop ones (and those Connection names), ``also_drop``, and
    any starting with ``own_prefix``."""
    drop = _dropped(also_drop)
    if "Connection" in headers:
        drop = drop | _connection_named(headers)
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        low = name.lower()
        if low not in drop and not (own_prefix and low.startswith(own_prefix)):
            kept.add(name, value)
    return kept


def _spoofable(name: str, value: str, ex: Exchange) -> bool:
    """Headers a client must not pass on: with '_' in the name (some servers read ``X_A`` as
    ``X-A``, which would smuggle past the replacement), replaced or overriding ones, and
    anything carrying a key (the one presented, or any value shaped like a key)."""
    low = name.lower()
    if "_" in low or low.startswith(REPLACED_PREFIXES) or low in OVERRIDES:
        return True
    if ex.raw_key and ex.raw_key in value:
        return True
    return "_" in value and keyformat.contains_key(value)


def _trusted(request: web.Request, networks: Sequence[IPv4Network | IPv6Network]) -> bool:
    if not networks:
        return False
    remote = request.remote
    if not remote:
        return False
    try:
        address = ip_address(remote)
    except ValueError:
        return False
    return any(address in network for network in networks)


def upstream_headers(ex: Exchange, trusted_proxies: Sequence[IPv4Network | IPv6Network] = ()
                     ) -> CIMultiDict[str]:
    request = ex.request
    # From a trusted load balancer the forwarding headers are kept and extended.
    via_proxy = _trusted(request, trusted_proxies)
    forwarded_for = request.headers.get("X-Forwarded-For") if via_proxy else None
    forwarded_proto = request.headers.get("X-Forwarded-Proto") if via_proxy else None
    forwarded_host = request.headers.get("X-Forwarded-Host") if via_proxy else None
    credential = ex.matched.extractor.headers if ex.matched.auth != "none" else ()
    headers = _end_to_end(request.headers, also_drop=(*REPLACED, *credential))
    for name, value in list(headers.items()):
        if _spoofable(name, value, ex):
            headers.popall(name, None)
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
    remote = request.remote or ""
    headers["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
    headers["X-Forwarded-Proto"] = forwarded_proto or request.scheme
    headers["X-Forwarded-Host"] = forwarded_host or request.host
    return headers


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)


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
    timeout = _timeout(route.timeout_s)
    data = _body(request, deps.settings.max_body_bytes) if request.body_exists else None
    if data is not None and request.headers.get("Expect", "").lower() == "100-continue":
        # The request passed every check: now the client may send its body.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    started = time.perf_counter()
    try:
        upstream = await deps.session.request(
            request.method, route.upstream_url(ex.path, ex.query),
            headers=upstream_headers(ex, deps.settings.trusted_proxies), data=data,
            allow_redirects=False, timeout=timeout)
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
    ex.upstream_s = time.perf_counter() - started
    upstream_latency(route.prefix).observe(ex.upstream_s)
    async with upstream:
        if upstream.status == 101:
            raise GatewayError("upstream_unavailable",
                               "the upstream switched protocols, which is not proxied")
        # aiohttp would drop the bytes that are not UTF-8 when writing them to the client.
        bad = not_utf8(upstream.raw_headers)
        if bad is not None:
            log.warning("upstream header not UTF-8", extra={"request_id": ex.request_id,
                                                            "header": bad})
            raise GatewayError("upstream_unavailable", f"the upstream answered with a {bad} "
                               "header that is not valid UTF-8, which cannot be forwarded "
                               "unchanged")
        if upstream.status >= 500:
            await limits.give_back(ex, deps)
        # The gateway's own headers cannot be forged by an upstream.
        back = _end_to_end(upstream.headers, own_prefix="x-keystile-")
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=back)
        response.headers["X-Request-Id"] = ex.request_id
        response.headers.update(limits.response_headers(ex))
        try:
            await response.prepare(request)
        except ConnectionError:  # the client left while the upstream answered
            ex.error = CLIENT_CLOSED
            log.info("client went away before the response", extra={
                "request_id": ex.request_id})
            return response
        ex.headers_s = time.perf_counter() - ex.started
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
        except ConnectionError:
            ex.error = CLIENT_CLOSED
            log.info("client went away mid-response", extra={"request_id": ex.request_id})
            return response
        await response.write_eof()
    return response
