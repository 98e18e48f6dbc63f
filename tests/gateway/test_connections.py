"""Connection limits of a worker: idle, slow-header and stalled-body connections are closed
after their timeouts, and a worker at its connection cap makes room by closing an idle
connection, else refuses with a clear 503 — so a flood of idle and slowloris connections
cannot stop it answering keyed requests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.app import create_app
from gateway.connections import GuardedRunner, Limits, default_max_connections
from gateway.settings import GatewaySettings, Settings, StoreSettings
from gateway.state import LISTENING
from keystile.embedded import free_port
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import Upstream, eventually, raw_request
from tests.gateway.test_observability import _value
from tests.keystile.conftest import KEYSTILE, Cli, cli  # noqa: F401

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def _worker(settings: Settings, **gateway: Any) -> AsyncIterator[int]:
    """One gateway worker as ``keystile gateway`` builds it, in this process, on a free port."""
    settings = settings.model_copy(
        update={"gateway": settings.gateway.model_copy(update=gateway)})
    app = create_app(settings)
    runner = GuardedRunner(app, Limits.of(settings), handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, backlog=1024).start()
    await asyncio.wait_for(app[LISTENING].wait(), 10)
    try:
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()


async def _closed_after(conn: Conn, timeout: float = 5.0) -> tuple[bytes, float]:
    """What the worker sent until it closed the connection, and how long that took."""
    reader, writer = conn
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), timeout)  # b"" until the worker closes
    writer.close()
    return data, time.monotonic() - started


async def _dropped(port: int, reason: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return _value(await r.text(), "keystile_connections_dropped_total", reason=reason)


async def _keep_alive_request(port: int) -> Conn:
    """A connection that has had one answered request and stays open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return reader, writer


async def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout(
        gateway_settings: Settings) -> None:
    async with _worker(gateway_settings, keepalive_timeout_s=0.5, header_timeout_s=5) as port:
        before = await _dropped(port, "idle_timeout")
        data, took = await _closed_after(await _keep_alive_request(port))
        assert data == b"" and 0.4 <= took < 3, took  # closed silently, on time
        assert await _dropped(port, "idle_timeout") == before + 1


async def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(
        gateway_settings: Settings) -> None:
    async with _worker(gateway_settings, header_timeout_s=0.5, keepalive_timeout_s=5) as port:
        data, took = await _closed_after(await asyncio.open_connection("127.0.0.1", port))
        assert data == b"" and 0.4 <= took < 3, took


async def _trickle(writer: asyncio.StreamWriter, every_s: float = 0.1) -> None:
    """A slowloris: one more header line now and then, never the end of the head."""
    with contextlib.suppress(ConnectionError):
        while True:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            await asyncio.sleep(every_s)


async def _slowloris(port: int) -> tuple[Conn, asyncio.Task[None]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /svc/x HTTP/1.1\r\nHost: gateway\r\n")
    return (reader, writer), asyncio.create_task(_trickle(writer))


async def test_slow_header_client_gets_408_after_header_timeout(
        gateway_settings: Settings) -> None:
    async with _worker(gateway_settings, header_timeout_s=0.5, keepalive_timeout_s=5) as port:
        conn, trickling = await _slowloris(port)
        data, took = await _closed_after(conn)
        trickling.cancel()
        assert 0.4 <= took < 3, took  # although it kept sending header lines
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"Connection: close" in head
        assert orjson.loads(body)["error"]["code"] == "request_timeout"
        assert await _dropped(port, "header_timeout") >= 1


async def test_stalled_body_is_cut_but_a_slow_steady_one_passes(
        gateway_settings: Settings, upstream: Upstream, admin: Admin,
        org: dict[str, Any]) -> None:
    key = (await admin.key(org["id"], scopes=["svc:write"]))["key"]
    head = (f"POST /svc/sink HTTP/1.1\r\nHost: gateway\r\nX-API-Key: {key}\r\n"
            "Content-Length: 1000\r\n\r\n").encode()
    async with _worker(gateway_settings, body_timeout_s=0.5, header_timeout_s=5,
                       keepalive_timeout_s=5) as port:
        before = await _dropped(port, "body_timeout")
        # 100 of 1,000 bytes, then nothing: the connection is closed and the upstream,
        # which was already receiving the body, never gets a complete request.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"x" * 100)
        data, took = await _closed_after((reader, writer))
        assert data == b"" and 0.4 <= took < 3, took
        assert upstream.seen == []
        assert await _dropped(port, "body_timeout") == before + 1

        # A body that keeps coming, slower in total than body_timeout_s, is not cut.
        small = (f"POST /svc/sink HTTP/1.1\r\nHost: gateway\r\nX-API-Key: {key}\r\n"
                 "Content-Length: 6\r\nConnection: close\r\n\r\n").encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(small)
        for _ in range(6):  # 1.2 s in all, 0.2 s between reads
            await asyncio.sleep(0.2)
            writer.write(b"y")
        data, _ = await _closed_after((reader, writer))
        assert data.startswith(b"HTTP/1.1 200"), data
        assert upstream.seen == [{"path": "/svc/sink", "received": 6}]


async def test_a_request_answered_before_its_body_arrived_then_idles_on_keepalive_timeout(
        gateway_settings: Settings) -> None:
    """A 401 is sent before the body is read; aiohttp reads the rest of the body out, and
    the connection is then idle like any answered one: closed after ``keepalive_timeout_s``."""
    async with _worker(gateway_settings, keepalive_timeout_s=0.5, header_timeout_s=5,
                       body_timeout_s=5) as port:
        before = await _dropped(port, "idle_timeout")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /svc/x HTTP/1.1\r\nHost: gateway\r\nContent-Length: 10\r\n\r\n"
                     b"12345")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401") and b"Connection: close" not in head
        writer.write(b"67890")  # the rest of the body, after the answer
        data, took = await _closed_after((reader, writer), timeout=10)
        assert b"HTTP/1.1" not in data and 0.4 <= took < 3, took  # not held until a backstop
        assert await _dropped(port, "idle_timeout") == before + 1


async def test_a_pipelined_head_begun_during_a_request_is_timed_and_never_evicted_as_idle(
        gateway_settings: Settings, upstream: Upstream) -> None:
    """Part of a second request arrives while the first is at the upstream: once the first
    is answered the connection is not idle but mid-head, so the cap evicts a truly idle
    connection instead, and the head gets its 408 ``header_timeout_s`` after it began."""
    async with _worker(gateway_settings, max_connections=2, header_timeout_s=1,
                       keepalive_timeout_s=5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /open/gate HTTP/1.1\r\nHost: gateway\r\n\r\n")
        await asyncio.wait_for(upstream.arrived.wait(), 5)
        begun = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        await writer.drain()
        # The worker runs in this event loop, and the upstream's answer takes it many more
        # turns to relay than reading these bytes does: they arrive while the first is busy.
        upstream.gate.set()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")

        idle = await _keep_alive_request(port)  # the cap is now reached
        response = await raw_request(port, "GET", "/healthz")
        assert response.status == 200
        data, _ = await _closed_after(idle, timeout=2)  # long before its keep-alive timeout:
        assert data == b""  # the truly idle one made room

        data, _ = await _closed_after((reader, writer))
        took = time.monotonic() - begun
        assert b"HTTP/1.1 408" in data, data  # not evicted, nor closed silently
        assert 0.9 <= took < 3, took


async def test_at_the_cap_the_longest_idle_connection_makes_room(
        gateway_settings: Settings) -> None:
    async with _worker(gateway_settings, max_connections=3) as port:
        idle = []
        for _ in range(3):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0.05)  # so "the longest idle" is well defined
        response = await raw_request(port, "GET", "/healthz")
        assert response.status == 200
        data, _ = await _closed_after(idle[0], timeout=2)  # the oldest made room
        assert data == b""
        for _, writer in idle[1:]:
            writer.close()


async def test_beyond_the_cap_with_nothing_idle_a_client_gets_503(
        gateway_settings: Settings) -> None:
    async with _worker(gateway_settings, max_connections=3) as port:
        slow = [await _slowloris(port) for _ in range(3)]
        refused: list[Any] = []

        async def refused_now() -> bool:  # once the worker has seen all three heads begin
            refused[:] = [await raw_request(port, "GET", "/healthz")]
            return refused[0].status == 503

        await eventually(refused_now)
        response = refused[0]
        assert response.headers["connection"] == "close"
        assert orjson.loads(response.body)["error"]["code"] == "too_many_connections"
        for (_, writer), trickling in slow:
            trickling.cancel()
            writer.close()

        async def counted() -> bool:  # /metrics answers once the slow ones are gone
            try:
                return await _dropped(port, "too_many_connections") >= 1
            except aiohttp.ClientError:
                return False

        await eventually(counted)


def test_the_default_cap_leaves_descriptors_for_upstream_and_store_connections() -> None:
    settings = Settings(stores=StoreSettings(pool_max_size=10, redis_max_connections=64))
    # 1,024 descriptors: 10 PostgreSQL, 64 Redis, 64 reserved, half of the rest for clients
    # (each may hold an upstream connection too).
    assert default_max_connections(settings, nofile=1024) == (1024 - 10 - 64 - 64) // 2
    assert default_max_connections(settings, nofile=100) == 1
    assert Limits.of(settings.model_copy(update={"gateway": GatewaySettings(
        max_connections=7)})).max_connections == 7


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def _start_worker_with_256_descriptors(config: Path, stores: Stores) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KEYSTILE, "gateway", "--config", str(config), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        start_new_session=True, preexec_fn=_low_nofile,
        env={**os.environ, "KEYSTILE_DATABASE_URL": stores.database_url,
             "KEYSTILE_REDIS_URL": stores.redis_url})


async def test_a_flooded_worker_still_answers_keyed_requests_within_100_ms(
        cli: Cli, stores: Stores, upstream: Upstream, admin: Admin,  # noqa: F811
        org: dict[str, Any], tmp_path: Path) -> None:
    """The attack that stopped a worker: more idle connections than it has descriptors,
    plus slowloris ones. Its cap (derived from its 256 descriptors: 59) is what the flood
    exceeds; the timeouts are long, so only the cap's eviction of idle connections keeps it
    answering."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nport = {port}\nheader_timeout_s = 30\n'
                      f'keepalive_timeout_s = 30\n[[routes]]\nprefix = "/svc"\n'
                      f'upstream = "{upstream.url}"\n')
    proc = _start_worker_with_256_descriptors(config, stores)
    cli.procs.append(proc)  # killed at the end whatever happens
    await asyncio.to_thread(cli.read_until, proc, f"listening on http://127.0.0.1:{port}")
    cap = (256 - 10 - 64 - 64) // 2
    key = (await admin.key(org["id"]))["key"]
    url = f"http://127.0.0.1:{port}/svc/x"
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url, headers={"X-API-Key": key}) as resp:  # key now cached
            assert resp.status == 200

        slow = [await _slowloris(port) for _ in range(20)]
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
        # The worker has taken the whole flood in once it has closed all idle connections
        # beyond its cap (20 slowloris ones hold a slot each).
        async def flood_taken() -> bool:
            closed = 0
            for reader, _ in idle:
                with contextlib.suppress(TimeoutError):
                    closed += await asyncio.wait_for(reader.read(1), 0.001) == b""
            return closed >= len(idle) - (cap - len(slow))

        await eventually(flood_taken, timeout=20)

        for _ in range(5):
            started = time.perf_counter()
            async with session.get(url, headers={"X-API-Key": key}) as resp:
                await resp.read()
                took = time.perf_counter() - started
            assert resp.status == 200
            assert took < 0.1, f"answered in {took * 1000:.0f} ms"
    for (_, writer), trickling in slow:
        trickling.cancel()
        writer.close()
    for _, writer in idle:
        writer.close()
    code, out = await asyncio.to_thread(cli.stop, proc)
    assert code == 0, out
    assert "Traceback" not in out and key not in out

