"""TLS: the gateway and admin listeners serve HTTPS (TLS 1.2+ with ECDHE and AEAD ciphers
only) and reload their certificate on SIGHUP without dropping a connection; https://
upstreams are verified, a refusal is a 502 with a log line naming the upstream, and the
gateway presents a client certificate to upstreams that require one. Certificates come from
test CAs made here (tests/tlscerts.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, cast

import orjson
import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization

from gateway.app import create_app
from gateway.connections import GuardedRunner, Limits
from gateway.server import _pass_reloads, _Slot
from gateway.settings import ConfigError, GatewaySettings, RouteSettings, Settings, load
from gateway.state import DEPS, LISTENING
from gateway.supervision import Backoff
from gateway.tls import ServerTLS
from keystile.embedded import free_port
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import Upstream
from tests.keystile.conftest import Cli, cli  # noqa: F401
from tests.tlscerts import CA, Issued

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
TOKEN = "tls-test-operator-token-000"
HEALTHY = b'{"status": "ok"}'


# Clients

def client_context(ca: CA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert))


def legacy_client(ca: CA, tls11: bool) -> ssl.SSLContext:
    """A client the gateway must refuse: TLS 1.1 only, or TLS 1.2 with CBC ciphers only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca.cert))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1, on purpose
        if tls11:
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
            context.set_ciphers("ALL:@SECLEVEL=0")
        else:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA")
    return context


def legacy_server(server: Issued) -> ssl.SSLContext:
    """The control: a permissive server the legacy clients do get through to."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(*server.pair)
    return context


async def connect(port: int, context: ssl.SSLContext, sni: bool = True) -> Conn:
    return await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if sni else ""), 10)


def serial(conn: Conn) -> int:
    """The serial number of the certificate the server presented on this connection."""
    cert = conn[1].get_extra_info("ssl_object").getpeercert()
    return int(cert["serialNumber"], 16)


async def fetch(conn: Conn, path: str, headers: dict[str, str] | None = None
                ) -> tuple[int, bytes]:
    """One keep-alive request on ``conn``: status and body."""
    reader, writer = conn
    lines = [f"GET {path} HTTP/1.1", "Host: gateway",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return int(head.split()[1]), await reader.readexactly(length)


async def refused(port: int, context: ssl.SSLContext) -> bool:
    try:
        conn = await connect(port, context)
    except (ssl.SSLError, ConnectionError):
        return True
    conn[1].close()
    return False


async def closed_after(conn: Conn, timeout: float = 10.0) -> tuple[bytes, float]:
    started = time.monotonic()
    data = await asyncio.wait_for(conn[0].read(), timeout)
    conn[1].close()
    return data, time.monotonic() - started


# TLS upstreams

@dataclass
class TlsUpstream:
    """An https:// upstream answering "ok" to each request; records the client certificate's
    common name it was shown (None without one)."""

    url: str = ""
    clients: list[str | None] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("ssl_object").getpeercert()
        self.clients.append(dict(x[0] for x in peer["subject"])["commonName"] if peer
                            else None)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def tls_upstream(server: Issued, client_ca: CA | None = None
                       ) -> AsyncIterator[TlsUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*server.pair)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(client_ca.cert))
    up = TlsUpstream()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await up.serve(reader, writer)
        finally:
            tasks.discard(task)

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    up.url = f"https://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        yield up
    finally:
        listener.close()
        for task in list(tasks):
            task.cancel()
        await listener.wait_closed()


# Configuration

def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keystile.toml"
    path.write_text(text)
    return path


def test_certificates_are_checked_when_the_configuration_is_loaded(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    good, other = ca.issue("server"), ca.issue("other")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    cases = {
        f'[gateway]\ntls_cert_file = "{good.cert}"\n':
            "gateway: Value error, tls_cert_file is set but tls_key_file is not; give both",
        f'[gateway]\ntls_key_file = "{good.key}"\n':
            "tls_key_file is set but tls_cert_file is not",
        f'[gateway]\ntls_cert_file = "{tmp_path}/missing.pem"\ntls_key_file = "{good.key}"\n':
            f"cannot read {tmp_path}/missing.pem: No such file or directory",
        f'[gateway]\ntls_cert_file = "{tmp_path}/junk.pem"\ntls_key_file = "{good.key}"\n':
            f"{tmp_path}/junk.pem holds no PEM certificate",
        f'[gateway]\ntls_cert_file = "{good.cert}"\ntls_key_file = "{good.cert}"\n':
            f"{good.cert} holds no PEM private key",
        f'[gateway]\ntls_cert_file = "{good.cert}"\ntls_key_file = "{other.key}"\n':
            f"cannot load {good.cert} with {other.key}: the key does not belong to the "
            "certificate",
        f'[gateway]\nupstream_client_cert_file = "{good.cert}"\n':
            "upstream_client_cert_file is set but upstream_client_key_file is not",
        f'[gateway]\nupstream_client_cert_file = "{good.cert}"\n'
        f'upstream_client_key_file = "{other.key}"\n': "the key does not belong",
        f'[admin]\ntls_cert_file = "{good.cert}"\ntls_key_file = "{other.key}"\n':
            "admin: Value error, cannot load",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match="invalid configuration") as caught:
            load(_config(tmp_path, text))
        assert message in str(caught.value), (text, str(caught.value))
    # An encrypted key would make OpenSSL prompt on the terminal: refused with a reason.
    key = serialization.load_pem_private_key(good.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="holds an encrypted private key; give it unencrypted"):
        load(_config(tmp_path, f'[gateway]\ntls_cert_file = "{good.cert}"\n'
                               f'tls_key_file = "{encrypted}"\n'))
    settings = load(_config(tmp_path, f'[gateway]\ntls_cert_file = "{good.cert}"\n'
                                      f'tls_key_file = "{good.key}"\n'
                                      f'upstream_client_cert_file = "{other.cert}"\n'
                                      f'upstream_client_key_file = "{other.key}"\n'
                                      f'[admin]\ntls_cert_file = "{good.cert}"\n'
                                      f'tls_key_file = "{good.key}"\n'))
    assert settings.gateway.upstream_client_cert == other.pair


# The gateway over TLS, as `keystile gateway` runs it

async def _start(cli: Cli, stores: Stores, config: Path,  # noqa: F811
                 command: str = "gateway", *args: str) -> subprocess.Popen[str]:
    proc = cli.start(command, "--config", str(config), *args,
                     env={"KEYSTILE_DATABASE_URL": stores.database_url,
                          "KEYSTILE_REDIS_URL": stores.redis_url,
                          "KEYSTILE_ADMIN_TOKEN": TOKEN})
    await asyncio.to_thread(cli.read_until, proc, "listening on https://127.0.0.1:")
    return proc


async def _all_new_handshakes_see(port: int, context: ssl.SSLContext, want: int) -> None:
    """Within 5 s, 20 fresh connections in a row (spread over the workers by the kernel)
    are all shown the certificate with serial ``want``."""
    deadline = time.monotonic() + 5
    while True:
        seen = []
        for _ in range(20):
            conn = await connect(port, context)
            seen.append(serial(conn))
            conn[1].close()
        if set(seen) == {want}:
            return
        assert time.monotonic() < deadline, f"serials {set(seen)}, not only {want}"


async def test_the_gateway_serves_https_and_reloads_its_certificate_on_sighup(
        cli: Cli, stores: Stores, upstream: Upstream, admin: Admin,  # noqa: F811
        org: dict[str, Any], tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    cert, key = tmp_path / "gateway.pem", tmp_path / "gateway.key"
    first = ca.issue("gateway", cert_path=cert, key_path=key)
    stranger = CA(tmp_path / "stranger", "Somebody else's CA").issue("upstream")
    port = free_port()
    async with tls_upstream(stranger) as untrusted, \
            tls_upstream(ca.issue("upstream"), client_ca=ca) as demanding:
        config = _config(tmp_path, f'[gateway]\nport = {port}\ntls_cert_file = "{cert}"\n'
                         f'tls_key_file = "{key}"\nupstream_ca_file = "{ca.cert}"\n'
                         'header_timeout_s = 1\n'
                         f'[[routes]]\nprefix = "/svc"\nupstream = "{upstream.url}"\n'
                         f'[[routes]]\nprefix = "/untrusted"\nupstream = "{untrusted.url}"\n'
                         'auth = "none"\n'
                         f'[[routes]]\nprefix = "/mtls"\nupstream = "{demanding.url}"\n'
                         'auth = "none"\n')
        proc = await _start(cli, stores, config, "gateway", "--workers", "2")
        output: list[str] = []

        async def until(marker: str) -> str:
            output.append(await asyncio.to_thread(cli.read_until, proc, marker))
            return output[-1]

        workers = [c.pid for c in psutil.Process(proc.pid).children()
                   if "resource_tracker" not in " ".join(c.cmdline())]
        assert len(workers) == 2
        trusting = client_context(ca)
        api_key = (await admin.key(org["id"]))["key"]

        # A keyed request end to end; the upstream is told the client came over https.
        opened = await connect(port, trusting)
        assert serial(opened) == first.serial
        assert await fetch(opened, "/svc/x", {"X-API-Key": api_key}) == (
            200, b"upstream says hi")
        assert upstream.seen[-1]["headers"]["X-Forwarded-Proto"] == "https"
        tls = opened[1].get_extra_info("ssl_object")
        assert tls.version() == "TLSv1.3"
        # Without SNI (a client that dialled the address) the same certificate is served.
        bare = await connect(port, trusting, sni=False)
        assert serial(bare) == first.serial and await fetch(bare, "/healthz") == (200, HEALTHY)
        bare[1].close()
        # TLS 1.2 gets ECDHE with an AEAD cipher; TLS 1.1, and TLS 1.2 offering only CBC
        # ciphers, are refused although a permissive server accepts those same clients.
        twelve = client_context(ca)
        twelve.maximum_version = ssl.TLSVersion.TLSv1_2
        conn = await connect(port, twelve)
        name, version, _ = conn[1].get_extra_info("ssl_object").cipher()
        assert version == "TLSv1.2" and name.startswith("ECDHE-") and (
            "GCM" in name or "CHACHA20" in name), name
        conn[1].close()
        control = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0,
                                             ssl=legacy_server(first))
        control_port = control.sockets[0].getsockname()[1]
        for tls11 in (True, False):
            assert not await refused(control_port, legacy_client(ca, tls11))
            assert await refused(port, legacy_client(ca, tls11))
        control.close()
        await control.wait_closed()
        # Plain HTTP on the TLS port is not answered in HTTP.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        data, _ = await closed_after((reader, writer))
        assert not data.startswith(b"HTTP/1.1 200")

        # A client that never starts its handshake is closed after header_timeout_s too.
        data, took = await closed_after(await asyncio.open_connection("127.0.0.1", port))
        assert data == b"" and 0.8 <= took < 5, took
        # The connection watchdog works on TLS connections: a head that never ends is 408.
        slow = await connect(port, trusting)
        slow[1].write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        data, took = await closed_after(slow)
        assert data.startswith(b"HTTP/1.1 408") and 0.8 <= took < 5, (data, took)

        # An upstream whose certificate does not verify: 502, and a line saying which.
        conn = await connect(port, trusting)
        status, body = await fetch(conn, "/untrusted/x")
        assert status == 502 and b"TLS certificate could not be verified" in body, body
        conn[1].close()
        assert untrusted.clients == []  # no request reached it
        line = await until("unavailable:")
        assert (f"upstream {untrusted.url} (route /untrusted) unavailable: the upstream's "
                "TLS certificate could not be verified (unable to get local issuer "
                "certificate)") in line, line

        # One that wants a client certificate, which this gateway has none of: 502 too.
        conn = await connect(port, trusting)
        status, body = await fetch(conn, "/mtls/x")
        conn[1].close()
        line = await until("(route /mtls) unavailable:")
        assert status == 502 and demanding.clients == [], body
        assert (f"upstream {demanding.url} (route /mtls) unavailable: the upstream closed the "
                "new TLS connection without answering (as an upstream requiring a client "
                "certificate does when not shown one it trusts: see "
                "upstream_client_cert_file)") in line, line

        # SIGHUP with a new certificate in place: every worker reloads it, new handshakes
        # see it, and the connection opened before carries on with the old one.
        second = ca.issue("gateway", cert_path=cert, key_path=key)
        proc.send_signal(signal.SIGHUP)
        for _ in workers:
            await until(f"gateway TLS certificate reloaded from {cert}: CN=gateway, serial "
                        f"{second.serial:x}")
        await _all_new_handshakes_see(port, trusting, second.serial)
        assert await fetch(opened, "/svc/x", {"X-API-Key": api_key}) == (
            200, b"upstream says hi")
        assert serial(opened) == first.serial

        # A reload whose files are bad keeps the certificate served, and says so.
        ca.issue("gateway", key_path=key)  # a key that does not belong to the certificate
        proc.send_signal(signal.SIGHUP)
        for _ in workers:
            line = await until("NOT reloaded")
            assert ("gateway TLS certificate NOT reloaded, still serving the previous one: "
                    f"cannot load {cert} with {key}: the key does not belong to the "
                    "certificate") in line, line
        await _all_new_handshakes_see(port, trusting, second.serial)
        assert await fetch(opened, "/healthz") == (200, HEALTHY)
        assert [c.pid for c in psutil.Process(proc.pid).children()
                if "resource_tracker" not in " ".join(c.cmdline())] == workers
        opened[1].close()

        code, out = await asyncio.to_thread(cli.stop, proc)
        assert code == 0, out
        output.append(out)
        logged = "".join(output)
        assert api_key not in logged
        assert "Traceback" not in logged, logged  # refused handshakes are not errors to log


def test_a_sighup_waits_for_a_worker_still_starting(tmp_path: Path) -> None:
    """The supervisor holds a SIGHUP for a worker that is not ready (its default action
    would end it) and passes it on once it is."""
    heard = tmp_path / "heard"
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGHUP, lambda *_: open({str(heard)!r}, 'a').write('hup'))\n"
        "print('up', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"
        ready = multiprocessing.get_context("spawn").Event()
        slot = _Slot(Backoff(), proc=cast(BaseProcess, child), ready=ready, reload=True)
        _pass_reloads([slot])
        assert slot.reload and not heard.exists()  # held
        ready.set()
        _pass_reloads([slot])
        assert not slot.reload
        deadline = time.monotonic() + 5
        while not heard.exists():
            assert time.monotonic() < deadline, "the SIGHUP never arrived"
            time.sleep(0.01)
        _pass_reloads([slot])  # passed on once only
        assert heard.read_text() == "hup"
    finally:
        child.kill()
        child.wait()


async def test_a_worker_at_its_connection_cap_refuses_over_tls(
        gateway_settings: Settings, tmp_path: Path) -> None:
    """The 503 of a full worker reaches a TLS client as an answer, not a reset."""
    ca = CA(tmp_path)
    server_tls = ServerTLS("gateway", *ca.issue("gateway").pair)
    settings = gateway_settings.model_copy(update={"gateway": gateway_settings.gateway
                                                   .model_copy(update={"max_connections": 1})})
    app = create_app(settings)
    runner = GuardedRunner(app, Limits.of(settings), handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, ssl_context=server_tls.context).start()
    await asyncio.wait_for(app[LISTENING].wait(), 10)
    port = sock.getsockname()[1]
    try:
        first = await connect(port, client_context(ca))
        assert await fetch(first, "/healthz") == (200, HEALTHY)
        # Mid-head, so not an idle connection the cap could close to make room.
        first[1].write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        await first[1].drain()
        second = await connect(port, client_context(ca))
        data, _ = await closed_after(second)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), data
        assert orjson.loads(body)["error"]["code"] == "too_many_connections"
        first[1].close()
    finally:
        await runner.cleanup()


# Mutual TLS with an upstream

async def test_mtls_the_gateway_presents_its_client_certificate_to_upstreams_that_ask(
        aiohttp_client: Callable[..., Awaitable[TestClient]], stores: Stores,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    servers, clients = CA(tmp_path / "servers"), CA(tmp_path / "clients", "Client CA")
    gateway_cert = clients.issue("keystile-gateway", client=True)
    impostor = CA(tmp_path / "other", "Other CA").issue("impostor", client=True)

    async def status_with(url: str, client_cert: Issued | None) -> tuple[int, bytes]:
        gw = GatewaySettings(
            upstream_ca_file=str(servers.cert),
            upstream_client_cert_file=str(client_cert.cert) if client_cert else None,
            upstream_client_key_file=str(client_cert.key) if client_cert else None)
        app = create_app(Settings(
            database_url=stores.database_url, redis_url=stores.redis_url, gateway=gw,
            routes=[RouteSettings(prefix="/m", upstream=url, auth="none", timeout_s=5)]))
        client = await aiohttp_client(app)
        await asyncio.wait_for(app[LISTENING].wait(), 10)
        resp = await client.get("/m/x")
        return resp.status, await resp.read()

    async with tls_upstream(servers.issue("upstream"), client_ca=clients) as up:
        assert await status_with(up.url, gateway_cert) == (200, b"ok")
        assert up.clients == ["keystile-gateway"]
        for shown in (None, impostor):
            status, body = await status_with(up.url, shown)
            assert status == 502, body
            assert b"the upstream closed the new TLS connection without answering (as an " \
                b"upstream requiring a client certificate does" in body, body
        logged = [r.getMessage() for r in caplog.records if "unavailable:" in r.getMessage()]
        assert len(logged) == 2 and all(f"upstream {up.url} (route /m)" in m for m in logged)
        assert up.clients == ["keystile-gateway"]  # the others never got a request through


async def test_sighup_rereads_the_upstream_client_certificate_for_new_connections(
        aiohttp_client: Callable[..., Awaitable[TestClient]], stores: Stores,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What a worker does on SIGHUP (gateway/server.py calls it): new upstream connections
    present the certificate now in the files; files that cannot be loaded change nothing."""
    caplog.set_level(logging.INFO, logger="gateway.upstream.client")
    servers, clients = CA(tmp_path / "servers"), CA(tmp_path / "clients", "Client CA")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    CA(tmp_path / "other", "Other CA").issue("old", client=True, cert_path=cert, key_path=key)
    async with tls_upstream(servers.issue("upstream"), client_ca=clients) as up:
        app = create_app(Settings(
            database_url=stores.database_url, redis_url=stores.redis_url,
            gateway=GatewaySettings(upstream_ca_file=str(servers.cert),
                                    upstream_client_cert_file=str(cert),
                                    upstream_client_key_file=str(key)),
            routes=[RouteSettings(prefix="/m", upstream=up.url, auth="none", timeout_s=5)]))
        client = await aiohttp_client(app)
        await asyncio.wait_for(app[LISTENING].wait(), 10)
        assert (await client.get("/m/x")).status == 502  # not a certificate it trusts
        renewed = clients.issue("renewed", client=True, cert_path=cert, key_path=key)
        app[DEPS].upstream.reload_tls()
        assert f"client certificate {cert}: CN=renewed, serial {renewed.serial:x}" in \
            caplog.text
        assert (await client.get("/m/x")).status == 200
        key.write_text("not a key\n")
        app[DEPS].upstream.reload_tls()
        assert f"upstream TLS files NOT reloaded, still using the previous ones: {key} holds " \
            "no PEM private key" in caplog.text
        app[DEPS].upstream.close()  # drop the pooled connection: the next one is new
        assert (await client.get("/m/x")).status == 200
        assert up.clients == ["renewed", "renewed"]


# The admin listener over TLS

async def test_the_admin_listener_serves_https_and_reloads_on_sighup(
        cli: Cli, stores: Stores, tmp_path: Path) -> None:  # noqa: F811
    ca = CA(tmp_path / "ca")
    cert, key = tmp_path / "admin.pem", tmp_path / "admin.key"
    first = ca.issue("admin", cert_path=cert, key_path=key)
    port = free_port()
    config = _config(tmp_path, f'redis_url = "{stores.redis_url}"\n[admin]\nport = {port}\n'
                     f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n')
    proc = await _start(cli, stores, config, "admin")
    trusting = client_context(ca)
    opened = await connect(port, trusting)
    assert serial(opened) == first.serial
    status, body = await fetch(opened, "/v1/orgs", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    twelve = client_context(ca)
    twelve.maximum_version = ssl.TLSVersion.TLSv1_2
    (await connect(port, twelve))[1].close()
    assert await refused(port, legacy_client(ca, tls11=True))

    second = ca.issue("admin", cert_path=cert, key_path=key)
    os.kill(proc.pid, signal.SIGHUP)
    await asyncio.to_thread(cli.read_until, proc, "admin API TLS certificate reloaded")
    fresh = await connect(port, trusting)
    assert serial(fresh) == second.serial
    fresh[1].close()
    assert (await fetch(opened, "/v1/orgs", {"Authorization": f"Bearer {TOKEN}"}))[0] == 200
    opened[1].close()
    code, out = await asyncio.to_thread(cli.stop, proc)
    assert code == 0, out
    assert TOKEN not in out
