"""Header bytes go through unchanged or the exchange is refused — never cut silently. Sent
over raw sockets both ways, since ordinary clients would not send these bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.settings import GatewaySettings, RouteSettings, Settings
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import RawResponse, Upstream, routes_for


async def send(port: int, head: bytes) -> RawResponse:
    """``head`` (request line and headers, without the blank line) byte for byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return RawResponse(int(status_line.split()[1]), headers, body)


@pytest.fixture
async def raw_upstream() -> AsyncIterator[str]:
    """Answers every request with a header value that is not UTF-8."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n"
                     b"Connection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.fixture
def gateway_settings(stores: Stores, upstream: Upstream, raw_upstream: str) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    gateway=GatewaySettings(),
                    routes=[*routes_for(upstream.url),
                            RouteSettings(prefix="/raw", upstream=raw_upstream, auth="none")])


async def test_a_header_value_that_is_not_utf8_is_refused(
        gateway: TestClient, upstream: Upstream, admin: Admin, org: dict[str, Any]) -> None:
    port = gateway.port
    assert port is not None
    key = (await admin.key(org["id"], scopes=["svc:read"]))["key"].encode()
    for value in (b"caf\xe9", b"\xff\xfe", b"a\xc3", b"\xc0\xaf", b"\xed\xa0\x80"):
        resp = await send(port, b"GET /svc/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: " + key
                          + b"\r\nX-Name: " + value)
        assert resp.status == 400, (value, resp)
        assert b'"code":"invalid_header"' in resp.body and b"X-Name header" in resp.body
    assert upstream.seen == []

    # UTF-8 arrives byte for byte.
    resp = await send(port, b"GET /svc/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: " + key
                      + "\r\nX-Name: café ☕ \U0001F600".encode())
    assert resp.status == 200, resp
    assert upstream.seen[-1]["headers"]["X-Name"] == "café ☕ \U0001F600"


@pytest.mark.parametrize("host", [b"gw, evil.example", b"gw/x", b"gw x", b"\xc3\xa9vil",
                                  b"gw:port", b"user@gw", b"gw:80:81"])
async def test_a_host_that_is_not_a_host_name_is_refused(
        gateway: TestClient, upstream: Upstream, host: bytes) -> None:
    port = gateway.port
    assert port is not None
    resp = await send(port, b"GET /open/x HTTP/1.1\r\nHost: " + host)
    assert resp.status == 400, (host, resp)
    assert b'"code":"invalid_header"' in resp.body
    assert upstream.seen == []


@pytest.mark.parametrize("host", [b"gw", b"gw.example:8080", b"127.0.0.1", b"[::1]:80"])
async def test_ordinary_hosts_pass(gateway: TestClient, upstream: Upstream,
                                   host: bytes) -> None:
    port = gateway.port
    assert port is not None
    resp = await send(port, b"GET /open/x HTTP/1.1\r\nHost: " + host)
    assert resp.status == 200, resp
    assert upstream.seen[-1]["headers"]["X-Forwarded-Host"] == host.decode()


async def test_an_upstream_header_that_is_not_utf8_is_not_cut(gateway: TestClient) -> None:
    port = gateway.port
    assert port is not None
    resp = await send(port, b"GET /raw/x HTTP/1.1\r\nHost: gw")
    assert resp.status == 502, resp
    assert b"X-Name header that is not valid UTF-8" in resp.body
    assert "x-name" not in resp.headers
