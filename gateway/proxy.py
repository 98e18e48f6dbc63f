"""Forwarding: the request goes upstream and the response comes back, both streamed, with
hop-by-hop headers dropped both ways and the gateway's own forwarding headers put in place of
anything the client claimed."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address

from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import keyformat
from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.metrics import upstream_latency
from gateway.stages import limits
from gateway.stages.headers import not_utf8
from gateway.upstream import (
    InvalidHead,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    origin_of,
    request_head,
)

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
SMALL_BODY = 64 * 1024  # a response body up to this is answered in one write
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade"})
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
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


async def _body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, never more than ``limit`` bytes."""
    seen = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise _BodyTooLarge
        yield chunk


def _response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> CIMultiDict[str]:
    """The upstream's headers to send back: as _end_to_end, end-to-end ones only and none of
    the gateway's own (an upstream cannot forge them), filtered on the raw bytes so only what
    is kept is decoded (UTF-8, checked before)."""
    named = [name.lower() for name, _ in raw]
    drop = _HOP_BY_HOP_BYTES
    if b"connection" in named:
        drop = drop | {token.strip().lower() for low, (_, value) in zip(named, raw, strict=True)
                       if low == b"connection" for token in value.split(b",")}
    return CIMultiDict([(name.decode("utf-8"), value.decode("utf-8"))
                        for low, (name, value) in zip(named, raw, strict=True)
                        if low not in drop and not low.startswith(b"x-keystile-")])


def _small(upstream: UpstreamResponse, headers: CIMultiDict[str]) -> bool:
    """Whether the whole body is, or will be, at most SMALL_BODY bytes: then it is read
    whole and answered in one write instead of streamed."""
    if upstream.complete:
        return upstream.buffered <= SMALL_BODY
    length = headers.get("Content-Length")
    return length is not None and length.isdigit() and int(length) <= SMALL_BODY


async def _request(ex: Exchange, deps: Deps) -> UpstreamResponse:
    """Sends the request upstream; returns when the response's head is in."""
    request, route = ex.request, ex.matched
    body = _body(request, deps.settings.max_body_bytes) if request.body_exists else None
    if body is not None and request.headers.get("Expect", "").lower() == "100-continue":
        # The request passed every check: now the client may send its body.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    origin = origin_of(route.origin)
    chunked = body is not None and request.content_length is None
    try:
        head = request_head(request.method, route.upstream_url(ex.path, ex.query).raw_path_qs,
                            origin.host_header,
                            upstream_headers(ex, deps.settings.trusted_proxies).items(),
                            chunked)
    except InvalidHead as exc:  # e.g. a line break in a stored value the gateway forwards
        log.warning("request head not sent", extra={"request_id": ex.request_id,
                                                    "error": str(exc)})
        raise GatewayError("upstream_unavailable", "the request could not be forwarded: "
                           f"{exc}") from None
    try:
        return await deps.upstream.request(origin, head, body, chunked=chunked,
                                           head_request=request.method == "HEAD",
                                           timeout=route.timeout_s)
    except _BodyTooLarge:
        raise GatewayError("payload_too_large", f"the body is larger than "
                           f"{deps.settings.max_body_bytes} bytes") from None
    except UpstreamTimeout as exc:
        log.info("upstream timeout", extra={"request_id": ex.request_id, "error": str(exc)})
        raise GatewayError("upstream_timeout") from None
    except UpstreamUnavailable as exc:
        # Which upstream and why in the line itself (the format shows no extra fields): an
        # operator must tell a certificate that did not verify from an upstream that is down.
        log.warning("upstream %s (route %s) unavailable: %s", origin.key, route.prefix, exc,
                    extra={"request_id": ex.request_id, "error": str(exc)})
        raise GatewayError("upstream_unavailable", f"{exc}") from None
    except (ConnectionError, PayloadEncodingError) as exc:
        # Reading the client's body failed: it left, or sent less than it announced.
        log.info("client body failed", extra={"request_id": ex.request_id,
                                              "error": type(exc).__name__})
        raise GatewayError("upstream_unavailable", "the request body could not be read "
                           "whole, so it was not forwarded") from None


async def forward(ex: Exchange, deps: Deps) -> web.StreamResponse:
    route = ex.matched
    started = time.perf_counter()
    upstream = await _request(ex, deps)
    try:
        ex.upstream_s = time.perf_counter() - started
        upstream_latency(route.prefix).observe(ex.upstream_s)
        return await _answer(ex, deps, upstream)
    finally:
        upstream.release()


async def _answer(ex: Exchange, deps: Deps, upstream: UpstreamResponse
                  ) -> web.StreamResponse:
    request = ex.request
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
    back = _response_headers(upstream.raw_headers)
    reason = upstream.reason.decode("latin-1") or None
    small = _small(upstream, back)
    body = b""
    if small:
        try:
            while chunk := await upstream.read():
                body += chunk
        except UpstreamError as exc:
            return _cut(ex, exc)
        response: web.StreamResponse = web.Response(status=upstream.status, reason=reason,
                                                    headers=back, body=body)
    else:
        response = web.StreamResponse(status=upstream.status, reason=reason, headers=back)
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
        if not small:
            while chunk := await upstream.read():
                await response.write(chunk)
        await response.write_eof()
    except UpstreamError as exc:
        return _cut(ex, exc, response)
    except ConnectionError:
        ex.error = CLIENT_CLOSED
        log.info("client went away mid-response", extra={"request_id": ex.request_id})
    return response


def _cut(ex: Exchange, exc: UpstreamError, response: web.StreamResponse | None = None
         ) -> web.StreamResponse:
    """After the upstream's head, too late for an error response: the client connection is
    cut so the client sees the failure."""
    log.warning("upstream failed mid-response", extra={"request_id": ex.request_id,
                                                      "error": str(exc)})
    transport = ex.request.transport
    if transport is not None:
        transport.close()
    return response if response is not None else web.Response(status=502)
