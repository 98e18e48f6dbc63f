"""The gateway's own upstream client (gateway/upstream) against upstreams that misbehave,
written as raw asyncio servers so every byte is the test's: framing both ways, bodies that
must not be read (HEAD, 204, 304), interim responses, connections the upstream closes or
poisons, stalls, garbage, and TLS verification. What is asserted is what a client of the
gateway sees and what the upstream received, plus how many connections the upstream saw
(reuse where it is safe, a new connection where it is not)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings, RouteSettings, Settings
from gateway.state import LISTENING
from tests.conftest import Stores
from tests.gateway.conftest import MiB, Upstream, eventually, routes_for
from tests.gateway.test_streaming import FLAT, PeakRss
from tests.tlscerts import CA

Request = tuple[bytes, bytes]  # head, de-chunked body
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawUpstream"], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}


@dataclass
class RawUpstream:
    """An upstream whose every byte is written by the test's ``script``."""

    script: Script | None = None
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None and self.script is not None
        self.tasks.add(task)
        try:
            await self.script(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> Request | None:
        """One request, its body de-chunked; None once the gateway closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        headers = _headers(head)
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await reader.readexactly(size))
                assert await reader.readexactly(2) == b"\r\n"
            assert await reader.readuntil(b"\r\n") == b"\r\n"  # no trailers are sent
            body = b"".join(parts)
        else:
            body = b""
        self.requests.append((head, body))
        return head, body


def answering(*responses: bytes | Callable[[Request], bytes]) -> Script:
    """Keeps the connection and answers its requests in turn (the last answer repeats)."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        n = 0
        while (request := await up.request(reader)) is not None:
            answer = responses[min(n, len(responses) - 1)]
            writer.write(answer(request) if callable(answer) else answer)
            await writer.drain()
            n += 1
    return script


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    up.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield up
    server.close()
    for task in list(up.tasks):
        task.cancel()
    await server.wait_closed()


@pytest.fixture
def gateway_settings(stores: Stores, upstream: Upstream, raw: RawUpstream) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    gateway=GatewaySettings(max_body_bytes=300 * MiB),
                    routes=[*routes_for(upstream.url),
                            RouteSettings(prefix="/raw", upstream=raw.url, auth="none",
                                          timeout_s=0.5)])


async def _get(gateway: TestClient, path: str = "/raw/x", method: str = "GET",
               **kwargs: Any) -> tuple[int, bytes, aiohttp.ClientResponse]:
    resp = await gateway.request(method, path, **kwargs)
    return resp.status, await resp.read(), resp


async def test_connections_are_reused_and_the_head_is_what_aiohttp_sent(
        gateway: TestClient, raw: RawUpstream) -> None:
    raw.script = answering(OK)
    for _ in range(3):
        assert (await _get(gateway))[:2] == (200, b"ok")
    assert raw.connections == 1
    head = raw.requests[0][0]
    port = raw.url.rsplit(":", 1)[1]
    assert head.startswith(b"GET /raw/x HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n")
    assert "content-length" not in _headers(head) and "transfer-encoding" not in _headers(head)


async def test_a_body_without_length_goes_chunked_and_a_chunked_answer_comes_back_whole(
        gateway: TestClient, raw: RawUpstream) -> None:
    def chunked(request: Request) -> bytes:
        body = request[1]
        parts = [body[i:i + 7] for i in range(0, len(body), 7)]
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
                + b"0\r\nX-Trailer: t\r\n\r\n")

    raw.script = answering(chunked)
    payload = bytes(range(256)) * 40

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 1000):
            yield payload[i:i + 1000]

    status, got, _ = await _get(gateway, method="POST", data=body())
    assert status == 200 and got == payload
    head, received = raw.requests[-1]
    assert _headers(head)["transfer-encoding"] == "chunked" and received == payload
    # With a length, the body goes as it is; the connection ended at a message boundary.
    status, got, _ = await _get(gateway, method="POST", data=b"abc")
    assert (status, got) == (200, b"abc")
    assert _headers(raw.requests[-1][0])["content-length"] == "3"
    assert "transfer-encoding" not in _headers(raw.requests[-1][0])
    assert raw.connections == 1


async def test_head_204_and_304_have_no_body_and_keep_the_connection_in_step(
        gateway: TestClient, raw: RawUpstream) -> None:
    def answer(request: Request) -> bytes:
        target = request[0].split(b" ")[1]
        if target == b"/raw/x204":
            return b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
        if target == b"/raw/x304":
            return b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nContent-Length: 9\r\n\r\n"
        if request[0].startswith(b"HEAD /raw/nolength"):
            return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
        if request[0].startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"

    raw.script = answering(answer)
    status, body, resp = await _get(gateway, "/raw/x", method="HEAD")
    assert (status, body, resp.headers["Content-Length"]) == (200, b"", "1000")
    assert (await _get(gateway))[:2] == (200, b"body")  # not taken for the HEAD's body
    status, body, resp = await _get(gateway, "/raw/nolength", method="HEAD")
    assert (status, body) == (200, b"")
    assert (await _get(gateway))[:2] == (200, b"body")
    status, body, resp = await _get(gateway, "/raw/x204")
    assert (status, body, resp.headers["X-A"]) == (204, b"", "1")
    assert (await _get(gateway))[:2] == (200, b"body")
    status, body, resp = await _get(gateway, "/raw/x304")
    assert (status, body, resp.headers["ETag"]) == (304, b"", '"e"')
    assert (await _get(gateway))[:2] == (200, b"body")
    assert raw.connections == 1


async def test_interim_responses_are_skipped(gateway: TestClient, raw: RawUpstream) -> None:
    raw.script = answering(b"HTTP/1.1 100 Continue\r\n\r\n"
                           b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                           b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-Final: 1\r\n\r\ndone")
    for _ in range(2):
        status, body, resp = await _get(gateway, method="POST", data=b"x")
        assert (status, body, resp.headers["X-Final"]) == (201, b"done", "1")
        assert "Link" not in resp.headers
    assert raw.connections == 1


async def test_101_is_refused(gateway: TestClient, raw: RawUpstream) -> None:
    raw.script = answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           b"Connection: Upgrade\r\n\r\n\x81\x05hello")
    status, body, _ = await _get(gateway)
    assert status == 502 and b"switched protocols" in body


async def test_connection_close_is_honoured(gateway: TestClient, raw: RawUpstream) -> None:
    raw.script = answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    for _ in range(2):
        assert (await _get(gateway))[:2] == (200, b"ok")
    assert raw.connections == 2


async def test_a_body_delimited_by_the_close_arrives_whole(gateway: TestClient,
                                                          raw: RawUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        await up.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for part in (b"to ", b"the ", b"end"):
            writer.write(part)
            await writer.drain()

    raw.script = script
    for _ in range(2):
        assert (await _get(gateway))[:2] == (200, b"to the end")
    assert raw.connections == 2


async def test_an_idle_connection_the_upstream_closed_is_not_used(
        gateway: TestClient, raw: RawUpstream) -> None:
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        await up.request(reader)
        writer.write(OK)  # keep-alive, then the upstream closes it while it is idle
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    raw.script = script
    assert (await _get(gateway))[:2] == (200, b"ok")
    await asyncio.wait_for(closed.wait(), 5)
    # The gateway notices the close before sending: the request goes on a new connection.
    assert (await _get(gateway))[:2] == (200, b"ok")
    assert raw.connections == 2 and len(raw.requests) == 2


async def test_a_request_already_sent_is_never_retried(gateway: TestClient,
                                                       raw: RawUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        await up.request(reader)  # and closes without answering

    raw.script = script
    status, body, _ = await _get(gateway, method="POST", data=b"pay once")
    assert status == 502 and b'"code":"upstream_unavailable"' in body
    assert raw.connections == 1 and len(raw.requests) == 1


@pytest.mark.parametrize("surplus", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!",  # a whole smuggled response
    b"garbage",
])
async def test_bytes_beyond_the_declared_length_never_reach_the_next_request(
        gateway: TestClient, raw: RawUpstream, surplus: bytes) -> None:
    raw.script = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + surplus,
                           b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
    assert (await _get(gateway))[:2] == (200, b"ok")
    assert (await _get(gateway))[:2] == (200, b"ok")  # a fresh connection, its first answer
    assert raw.connections == 2


async def test_a_chunked_answer_followed_by_more_is_not_reused(gateway: TestClient,
                                                               raw: RawUpstream) -> None:
    raw.script = answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!")
    for _ in range(2):
        assert (await _get(gateway))[:2] == (200, b"ok")
    assert raw.connections == 2


async def test_garbage_instead_of_a_response_is_502(gateway: TestClient,
                                                     raw: RawUpstream) -> None:
    first = answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        await (first if up.connections == 1 else answering(OK))(reader, writer, up)

    raw.script = script
    status, body, _ = await _get(gateway)
    assert status == 502 and b"not valid HTTP/1.1" in body
    assert (await _get(gateway))[:2] == (200, b"ok")  # the broken connection was dropped
    assert raw.connections == 2


async def test_a_head_without_end_is_502(gateway: TestClient, raw: RawUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        await up.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:  # until the gateway hangs up
            writer.write(b"X-More: " + b"m" * 1000 + b"\r\n")
            await writer.drain()

    raw.script = script
    status, body, _ = await _get(gateway)
    assert status == 502 and b"response head is longer than" in body


async def test_a_slow_upstream_is_504_and_a_stalled_body_cuts_the_client(
        gateway: TestClient, raw: RawUpstream) -> None:
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        request = await up.request(reader)
        assert request is not None
        if request[0].startswith(b"GET /raw/slow"):
            await release.wait()  # never answers within the route's 0.5 s
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70000)
            await writer.drain()
            await release.wait()  # and the rest never comes

    raw.script = script
    status, body, _ = await _get(gateway, "/raw/slow")
    assert status == 504 and b'"code":"upstream_timeout"' in body
    resp = await gateway.get("/raw/stall")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    release.set()


async def test_an_upstream_that_stops_reading_the_body_is_504(gateway: TestClient,
                                                              raw: RawUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.Event().wait()  # reads no body, answers nothing

    raw.script = script
    status, body, _ = await _get(gateway, method="POST", data=b"u" * (64 * MiB))
    assert status == 504 and b'"code":"upstream_timeout"' in body


async def test_a_large_chunked_answer_streams_within_the_memory_bound(
        gateway: TestClient, raw: RawUpstream) -> None:
    size = 100 * MiB

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        await up.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (MiB, b"c" * MiB)
        for _ in range(size // MiB):
            writer.write(chunk)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    raw.script = script
    async with PeakRss() as download:
        resp = await gateway.get("/raw/big")
        assert resp.status == 200
        received = 0
        async for part in resp.content.iter_chunked(MiB):
            received += len(part)
            await asyncio.sleep(0.01)  # a consumer far slower than the upstream
        assert received == size
    assert download.growth < FLAT, f"grew RSS by {download.growth / MiB:.0f} MiB"


async def test_https_upstreams_are_verified_against_the_system_store_or_the_ca_file(
        aiohttp_client: Callable[..., Awaitable[TestClient]], stores: Stores,
        raw: RawUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = CA(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(*ca.issue("upstream").pair)
    raw.script = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0, ssl=tls)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def gateway_with(ca_file: str | None) -> TestClient:
        settings = Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                            gateway=GatewaySettings(upstream_ca_file=ca_file),
                            routes=[RouteSettings(prefix="/tls", upstream=url, auth="none",
                                                  timeout_s=5)])
        app = create_app(settings)
        client = await aiohttp_client(app)
        await asyncio.wait_for(app[LISTENING].wait(), 10)
        return client

    try:
        status, body, _ = await _get(await gateway_with(None), "/tls/x")
        assert status == 502, body
        assert b"TLS certificate could not be verified" in body
        assert any("certificate could not be verified" in getattr(r, "error", "")
                   for r in caplog.records)  # logged for the operator
        assert raw.requests == []
        status, body, _ = await _get(await gateway_with(str(ca.cert)), "/tls/x")
        assert (status, body) == (200, b"secret")
        assert _headers(raw.requests[0][0])["host"] == url.removeprefix("https://")
    finally:
        server.close()
        for task in list(raw.tasks):
            task.cancel()
        await server.wait_closed()


def test_a_ca_file_that_cannot_be_loaded_is_a_clear_config_error(tmp_path: Path) -> None:
    from pydantic import ValidationError

    (tmp_path / "empty.pem").write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", tmp_path / "empty.pem"):
        with pytest.raises(ValidationError, match="cannot load CA certificates"):
            GatewaySettings(upstream_ca_file=str(path))


def test_a_header_that_would_break_the_framing_is_never_written() -> None:
    from gateway.upstream import InvalidHead, request_head

    head = request_head("POST", "/a?b=1", "up:81", [("X-A", "1"), ("Content-Length", "2")],
                        chunked=False)
    assert head == b"POST /a?b=1 HTTP/1.1\r\nHost: up:81\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n"
    assert request_head("PUT", "/", "up", [], chunked=True).endswith(
        b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    for name, value in (("X-A", "1\r\nX-Injected: 1"), ("X-A", "1\n"), ("X\rA", "1")):
        with pytest.raises(InvalidHead):
            request_head("GET", "/", "up", [(name, value)], chunked=False)


async def test_the_pool_keeps_at_most_max_idle_and_closes_them_after_the_idle_timeout(
        raw: RawUpstream) -> None:
    from gateway.upstream import UpstreamClient, origin_of, request_head

    ended = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up: RawUpstream) -> None:
        nonlocal ended
        await answering(OK)(reader, writer, up)
        ended += 1  # the gateway closed this connection

    raw.script = script
    client = UpstreamClient(idle_timeout_s=0.3, max_idle=1)
    origin = origin_of(raw.url)

    async def one() -> bytes:
        head = request_head("GET", "/", origin.host_header, [], chunked=False)
        response = await client.request(origin, head, None, chunked=False,
                                        head_request=False, timeout=5)
        try:
            return await response.read()
        finally:
            response.release()

    try:
        assert await asyncio.gather(one(), one()) == [b"ok", b"ok"]
        assert raw.connections == 2

        async def ended_at_least(n: int) -> bool:
            return ended >= n

        await eventually(lambda: ended_at_least(1))  # beyond max_idle: closed at once
        assert ended == 1
        await eventually(lambda: ended_at_least(2))  # the idle one, after the idle timeout
    finally:
        client.close()


async def test_hop_by_hop_and_gateway_headers_from_the_upstream_stop_at_the_gateway(
        gateway: TestClient, raw: RawUpstream) -> None:
    raw.script = answering(b"HTTP/1.1 200 OK\r\nX-Keystile-Key-Id: forged\r\n"
                           b"Connection: X-Private, keep-alive\r\nX-Private: secret\r\n"
                           b"Keep-Alive: timeout=5\r\nX-Kept: 1\r\nX-Kept: 2\r\n"
                           b"Content-Length: 2\r\n\r\nok")
    status, body, resp = await _get(gateway)
    assert (status, body) == (200, b"ok")
    assert resp.headers.getall("X-Kept") == ["1", "2"]
    for name in ("X-Keystile-Key-Id", "X-Private", "Keep-Alive"):
        assert name not in resp.headers


async def test_a_connection_never_accepted_is_504_after_the_route_timeout(
        aiohttp_client: Callable[..., Awaitable[TestClient]], stores: Stores,
        caplog: pytest.LogCaptureFixture) -> None:
    # A listener whose accept queue is full: Linux drops further SYNs, so connect() hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        settings = Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                            routes=[RouteSettings(prefix="/hang", auth="none", timeout_s=0.5,
                                                  upstream=f"http://127.0.0.1:{port}")])
        app = create_app(settings)
        client = await aiohttp_client(app)
        await asyncio.wait_for(app[LISTENING].wait(), 10)
        caplog.set_level(logging.INFO, logger="gateway.proxy")
        started = time.monotonic()
        status, body, _ = await _get(client, "/hang/x")
        assert status == 504 and b'"code":"upstream_timeout"' in body
        assert time.monotonic() - started < 3
        errors = [getattr(r, "error", "") for r in caplog.records]
        assert "the upstream did not accept the connection in time" in errors, errors
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
