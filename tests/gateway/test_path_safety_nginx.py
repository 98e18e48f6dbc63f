"""nginx as the upstream, so the test sees what a real server makes of every forwarded path:
each hostile spelling is either refused by the gateway with 400 ``invalid_path`` (or 401 /
403 / 404 before forwarding), or nginx routes exactly the path the gateway checked to the
location of the route the gateway chose — a request let through under ``/public`` never lands
in nginx's ``/echo`` or ``/adminarea``."""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bench import tools
from gateway.paths import normalise, under
from gateway.settings import GatewaySettings, RouteSettings, Settings
from keystile.embedded import free_port
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import RawResponse, raw_request

LOCATIONS = ("/public", "/echo", "/adminarea")


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nginx never listened on {port}")


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx (Debian's package, unpacked by bench/tools.py) answering, per location, the
    location's name, its decoded and normalised ``$uri`` and the raw ``$request_uri``."""
    if not tools.available():
        pytest.skip("nginx needs apt-get and dpkg to be unpacked from Debian's packages")
    try:
        binary = tools.nginx()
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"nginx could not be unpacked from Debian's packages: {exc}")
    work: Path = tmp_path_factory.mktemp("nginx")
    locations = "\n".join(
        f'    location {name} {{ return 200 "{name[1:]}|$uri|$request_uri"; }}'
        for name in (*LOCATIONS, "/"))
    for attempt in range(3):  # the free port may be taken before nginx binds it
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
  access_log off;
  default_type text/plain;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  server {{
    listen 127.0.0.1:{port};
{locations}
  }}
}}""")
        proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(work)],
                                stderr=subprocess.DEVNULL)
        try:
            _wait_port(port, proc)
        except RuntimeError:
            proc.kill()
            proc.wait()
            if attempt == 2:
                raise
            continue
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait()
        return


@pytest.fixture
def gateway_settings(stores: Stores, nginx: str) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    gateway=GatewaySettings(),
                    routes=[RouteSettings(prefix="/public", upstream=nginx, auth="none"),
                            RouteSettings(prefix="/echo", upstream=nginx,
                                          scopes={"*": ["echo:read"]}),
                            RouteSettings(prefix="/adminarea", upstream=nginx,
                                          scopes={"*": ["admin:all"]})])


# Ways to say '..', and ways to say '/', that some decoder somewhere accepts.
DOTDOTS = [
    "..", "%2e%2e", "%2E%2E", "%2e%2E", ".%2e", "%2e.", "%%32%65%%32%65", "%2%65%2%65",
    "%%32%65.", ".%2%65", "%25%32%65%25%32%65", "%252e%252e", "%252E%252E", "..%3B", "..%3b",
    "..;", "%2e%2e%3b", "%2e%2e;", "..;x", "%u002e%u002e", "%U002E%U002E", "%C0%AE%C0%AE",
    "%c0%ae.", "%E0%80%AE%E0%80%AE", "%F0%80%80%AE%F0%80%80%AE", "%EF%BC%8E%EF%BC%8E",
    "%ef%bc%8e.", "%E2%80%A4%E2%80%A4", "%E2%80%A5", "%EF%B9%92%EF%B9%92", "..%00", "%00..",
    "..%20", "%20..", "...", "....", "..%09", "..%0d%0a", ".%00.", "..%C2%A0", "..%E2%80%8B",
    "..%2f..", "%2e%2e%2f%2e%2e", "..%5c..", "..%%35%63..", ". .", "%2e",
]
SLASHES = [
    "/", "%2f", "%2F", "%5c", "%5C", "%EF%BC%8F", "%ef%bc%bc", "%E2%88%95", "%E2%81%84",
    "%E2%88%96", "%C0%AF", "%c1%9c", "%E0%80%AF", "%%32%66", "%2%66", "%%35%63", "%252f",
    "%25%32%66", ";/", "//", "/./", "%00/", "%C2%A5",
]
EXTRAS = [
    "//echo/x", "///adminarea/users", "/public/../echo/x", "/public/./../echo/x",
    "/public/x/../../echo/x", "/./echo/x", "/%65cho/x", "/ech%6F/x", "/%65%63%68%6f/x",
    "/Echo/x", "/ECHO/x", "/public%2fecho", "/public%2F..%2Fecho", "/public/.%252e/echo",
    "/public/x/..%252f..%252fecho", "/public;/../echo", "/public/..;/echo",
    "/public/x%00/../../echo", "/public./../echo", "/public/echo.", "/public/%2e/echo",
    "/public/%2E%2E%2F%2E%2E%2Fadminarea", "/public/x#/../../echo", "/public/x?/../../echo",
    "/public/%3f/../echo", "/public/%23/../echo", "/public%3F/../echo", "/echo%00/x",
    "/public/%E2%80%AE/../echo", "/public/\\..\\echo", "/public/..\\echo",
    "/public/%u2215echo", "/%EF%BD%85cho/x", "/e%EF%BD%83ho/x", "/public/%%/echo",
    "/public/%/echo", "/public/%2/echo", "/public/%zz/../echo", "/public%20/../echo",
    "/publicecho/../echo", "/public..", "/public/...", "/public/%2e%2e", "/public/..",
    "/public/x/..", "/adminarea%2F../public",
]


def _targets() -> list[str]:
    out = {f"/public/{d}{s}echo/x" for d, s in itertools.product(DOTDOTS, SLASHES)}
    out |= {f"/echo/{d}/adminarea/users" for d in DOTDOTS}
    out |= {f"/echo/..{s}adminarea/users" for s in SLASHES}
    out |= {f"/public/{d}{s}adminarea/users" for d in DOTDOTS for s in ("/", "%2f")}
    out |= set(EXTRAS)
    return sorted(out)


def _verdict(target: str, resp: RawResponse, allowed: tuple[str, ...]) -> str | None:
    """What is wrong with ``resp`` to ``target``, or None."""
    if b"nginx" in resp.body:
        return f"refused by nginx, not the gateway: {resp.status} {resp.body[:80]!r}"
    if resp.status == 400 and not resp.body.startswith(b"{"):
        return None  # aiohttp's parser refused the request line (a raw space, a tab)
    if resp.status in (400, 401, 403, 404):
        if b'"error"' not in resp.body:
            return f"not the gateway's refusal: {resp.status} {resp.body[:80]!r}"
        if resp.status == 400 and b'"code":"invalid_path"' not in resp.body:
            return f"400 without invalid_path: {resp.body[:120]!r}"
        return None
    if resp.status != 200:
        return f"unexpected {resp.status}: {resp.body[:120]!r}"
    location, uri, request_uri = resp.body.decode("utf-8", "replace").split("|")
    checked = normalise(target.partition("?")[0])
    route = next(p for p in LOCATIONS if under(checked, p))
    if request_uri.partition("?")[0] != checked:
        return f"forwarded {request_uri!r}, checked {checked!r}"
    if "/" + location != route:
        return f"the gateway routed {route}, nginx's location is /{location}"
    if not under(uri, route):
        return f"nginx's $uri {uri!r} is not under {route}"
    if route not in allowed:
        return f"reached {route}"
    return None


async def _sweep(port: int, targets: list[str], headers: dict[str, str],
                 allowed: tuple[str, ...]) -> tuple[list[str], int]:
    limit = asyncio.Semaphore(16)
    forwarded = 0

    async def one(target: str) -> str | None:
        nonlocal forwarded
        async with limit:
            resp = await raw_request(port, "GET", target, headers)
        forwarded += resp.status == 200
        problem = _verdict(target, resp, allowed)
        return f"{target}: {problem}" if problem else None

    results = await asyncio.gather(*(one(t) for t in targets))
    return [r for r in results if r], forwarded


async def test_nginx_sees_the_path_the_gateway_checked(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    port = gateway.port
    assert port is not None
    # The fixture works: plain paths reach their own location, UTF-8 arrives decoded once.
    ok = await raw_request(port, "GET", "/public/caf%c3%a9")
    assert (ok.status, ok.body) == (200, "public|/public/café|/public/caf%C3%A9".encode())

    key = await admin.key(org["id"], scopes=["echo:read"])
    echo = await raw_request(port, "GET", "/echo/x", {"X-API-Key": key["key"]})
    assert (echo.status, echo.body) == (200, b"echo|/echo/x|/echo/x")

    targets = _targets()
    problems, anonymous = await _sweep(port, targets, {}, ("/public",))
    keyed_problems, keyed = await _sweep(port, targets, {"X-API-Key": key["key"]},
                                         ("/public", "/echo"))
    problems += [f"with an echo:read key: {p}" for p in keyed_problems]
    assert not problems, f"{len(problems)} of {2 * len(targets)}:\n" + "\n".join(problems)
    # Some spellings are harmless and pass: the sweep saw nginx answer, not only refusals.
    assert anonymous > 0 and keyed > anonymous
