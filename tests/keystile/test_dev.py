"""``keystile dev`` end to end: what it prints works, Ctrl-C/SIGTERM stops everything it
started, and a second run finds the data of the first."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from keystile.dev import READY
from keystile.embedded import free_port
from tests.conftest import Stores
from tests.keystile.conftest import Cli


def _field(banner: str, label: str) -> str:
    match = re.search(rf"^\s*{label}\s+(\S+)", banner, re.MULTILINE)
    assert match, f"{label!r} not in banner:\n{banner}"
    return match.group(1)


def _call(url: str, headers: dict[str, str], payload: dict[str, Any] | None = None
          ) -> tuple[int, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _curl_lines(banner: str) -> list[str]:
    """The ready-to-paste commands, continuation lines joined."""
    text = banner.split("Try:", 1)[1].replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("curl")]


def test_dev_stack_prints_working_credentials_and_stops_cleanly(cli: Cli, tmp_path: Path
                                                                ) -> None:
    data = tmp_path / "data"
    admin_port, upstream_port, gateway_port = free_port(), free_port(), free_port()
    args = ("dev", "--data-dir", str(data), "--admin-port", str(admin_port),
            "--upstream-port", str(upstream_port), "--gateway-port", str(gateway_port))
    env = {"KEYSTILE_ADMIN_TOKEN": ""}
    proc = cli.start(*args, env=env)
    banner = cli.read_until(proc, READY)
    token = _field(banner, "operator token")
    root_key, sub_key = _field(banner, "root key"), _field(banner, "sub key")
    admin = f"http://127.0.0.1:{admin_port}"

    status, me = _call(f"{admin}/v1/keys/self", {"X-API-Key": sub_key})
    assert status == 200 and me["scopes"] == ["echo:read"] and me["root"] is False
    status, created = _call(f"{admin}/v1/keys", {"X-API-Key": root_key,
                                                 "X-Provider": "demo"},
                            {"name": "kept", "owner_id": "clinic-1"})
    assert status == 201
    status, listed = _call(f"{admin}/v1/keys", {"Authorization": f"Bearer {token}"})
    assert status == 200 and created["id"] in {k["id"] for k in listed["data"]}
    status, echoed = _call(f"http://127.0.0.1:{upstream_port}/a//b?x=1", {"X-Thing": "1"})
    assert echoed["path"] == "/a//b" and echoed["query"] == "x=1"
    assert echoed["headers"]["X-Thing"] == "1"
    # The gateway serves config/dev.toml: /echo with scopes, /public without a key.
    gateway = f"http://127.0.0.1:{gateway_port}"
    status, echoed = _call(f"{gateway}/echo/hi?x=1", {"X-API-Key": sub_key})
    assert status == 200 and echoed["path"] == "/echo/hi"
    assert echoed["headers"]["X-Keystile-Key-Id"] == me["id"]
    status, refused = _call(f"{gateway}/echo/hi", {"X-API-Key": sub_key}, {"a": 1})
    assert status == 403 and refused["error"]["code"] == "insufficient_scope"
    status, _ = _call(f"{gateway}/public/x", {})
    assert status == 200

    assert len(_curl_lines(banner)) == 20  # every printed example is tried below
    if shutil.which("curl"):
        for line in _curl_lines(banner):
            result = subprocess.run(["bash", "-c", line + " -f -o /dev/null -w '%{http_code}'"],
                                    capture_output=True, text=True, timeout=30, check=False)
            assert result.stdout in ("200", "201"), (line, result.stdout, result.stderr)

    # Leave the demo keys unusable: the next start must make them work again.
    status, revoked = _call(f"{admin}/v1/keys/{me['id']}/revoke",
                            {"Authorization": f"Bearer {token}"}, {})
    assert status == 200 and revoked["status"] == "revoked", (status, revoked)
    status, paused = _call(f"{admin}/v1/keys/{me['parent_id']}/pause",
                           {"Authorization": f"Bearer {token}"}, {})
    assert status == 200 and paused["status"] == "paused", (status, paused)
    assert f"ADMIN={admin} TOKEN={token} ROOT={root_key} SUB={sub_key} JWT=" in banner

    pg_port = int(re.search(r"PostgreSQL\s+\S+:(\d+)/", banner).group(1))  # type: ignore[union-attr]
    redis_port = int(re.search(r"Redis\s+redis://127.0.0.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
    code, out = cli.stop(proc)
    assert code == 0, out
    for port in (admin_port, upstream_port, gateway_port, pg_port, redis_port):
        assert _closed(port), f"port {port} still open after stop"
    assert not (data / "postgres" / "pgdata" / "postmaster.pid").exists()

    # A second run reuses the data: the key created above is still there, same token.
    proc = cli.start(*args, env=env)
    banner = cli.read_until(proc, READY)
    assert _field(banner, "operator token") == token
    assert _field(banner, "root key") != root_key  # demo secrets are fresh each start
    status, kept = _call(f"{admin}/v1/keys/{created['id']}", {"Authorization": f"Bearer {token}"})
    assert status == 200 and kept["name"] == "kept"
    status, _ = _call(f"{admin}/v1/keys/self", {"X-API-Key": root_key})
    assert status == 401  # the old demo secret stopped working
    status, _ = _call(f"{gateway}/echo/hi", {"X-API-Key": sub_key})
    assert status == 401  # ...in the gateway too, though Redis kept its shared record
    for label in ("root key", "sub key"):
        status, again = _call(f"{admin}/v1/keys/self", {"X-API-Key": _field(banner, label)})
        assert status == 200 and again["status"] == "active", (label, again)
    code, _ = cli.stop(proc)
    assert code == 0


def test_dev_takes_the_operator_token_from_the_environment(cli: Cli, tmp_path: Path) -> None:
    admin_port = free_port()
    proc = cli.start("dev", "--data-dir", str(tmp_path / "d"), "--admin-port", str(admin_port),
                     "--upstream-port", str(free_port()), "--gateway-port", str(free_port()),
                     env={"KEYSTILE_ADMIN_TOKEN": "from-the-environment-123"})
    banner = cli.read_until(proc, READY)
    assert _field(banner, "operator token") == "from-the-environment-123"
    status, _ = _call(f"http://127.0.0.1:{admin_port}/v1/orgs",
                      {"Authorization": "Bearer from-the-environment-123"})
    assert status == 200
    assert cli.stop(proc)[0] == 0


def test_dev_reports_a_busy_port_in_one_line(cli: Cli, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli.run("dev", "--data-dir", str(tmp_path / "d"), "--admin-port", str(port),
                         "--upstream-port", str(free_port()),
                         "--gateway-port", str(free_port()))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr




def test_dev_uses_external_stores_given_as_flags(cli: Cli, tmp_path: Path, stores: Stores,
                                                 cluster_url: str) -> None:
    """``--database-url`` and ``--redis-url`` (here a Redis Cluster) replace the embedded
    stores: none is started, and a key created through the admin API works at the
    gateway."""
    data = tmp_path / "data"
    admin_port, upstream_port, gateway_port = free_port(), free_port(), free_port()
    proc = cli.start("dev", "--data-dir", str(data), "--admin-port", str(admin_port),
                     "--upstream-port", str(upstream_port), "--gateway-port", str(gateway_port),
                     "--database-url", stores.database_url, "--redis-url", cluster_url,
                     env={"KEYSTILE_ADMIN_TOKEN": ""})
    banner = cli.read_until(proc, READY)
    assert _field(banner, "Redis") == cluster_url
    postgres = _field(banner, "PostgreSQL")
    assert ":***@" in postgres and stores.database_url.split("@")[0] not in banner
    assert not (data / "postgres").exists() and not (data / "redis").exists()
    status, body = _call(f"http://127.0.0.1:{gateway_port}/echo/hi",
                         {"X-API-Key": _field(banner, "sub key")})
    assert status == 200, body
    code, _ = cli.stop(proc)
    assert code == 0
