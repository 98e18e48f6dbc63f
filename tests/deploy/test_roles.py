"""The image's three roles, run as its entrypoint runs them with each deploy TOML as it is
(only the listen address moved off the fixed ports): migrate succeeds, the admin API and a
gateway of the TOML's two workers start and answer the probes compose and Kubernetes use,
and the TOML's route is served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import psutil
import pytest

from keystile.embedded import free_port
from tests.conftest import Stores
from tests.deploy.conftest import DEPLOY, toml
from tests.keystile.conftest import Cli, cli  # noqa: F401

TOKEN = "deploy-test-operator-token"


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def _eventually_ok(session: aiohttp.ClientSession, url: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while (status := await _status(session, url)) != 200:
        assert asyncio.get_running_loop().time() < deadline, f"{url}: {status}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("config", ["keystile.toml", "k8s/keystile.toml"])
async def test_every_role_runs_with_the_deploy_config(
        cli: Cli, stores: Stores, config: str) -> None:  # noqa: F811
    path = str(DEPLOY / config)
    env = {"KEYSTILE_DATABASE_URL": stores.database_url, "KEYSTILE_REDIS_URL": stores.redis_url}
    migrated = await asyncio.to_thread(cli.run, "migrate", "--config", path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "database schema is up to date" in migrated.stdout

    gateway_port, admin_port = free_port(), free_port()
    gateway = cli.start("gateway", "--config", path, "--host", "127.0.0.1", "--port",
                        str(gateway_port), env=env)
    admin = cli.start("admin", "--config", path, "--host", "127.0.0.1", "--port",
                      str(admin_port), env={**env, "KEYSTILE_ADMIN_TOKEN": TOKEN})
    await asyncio.to_thread(cli.read_until, gateway,
                            f"listening on http://127.0.0.1:{gateway_port}")
    await asyncio.to_thread(cli.read_until, admin, f"listening on http://127.0.0.1:{admin_port}")
    workers = [c for c in psutil.Process(gateway.pid).children()
               if "resource_tracker" not in " ".join(c.cmdline())]
    assert len(workers) == toml(Path(path))["gateway"]["workers"]

    async with aiohttp.ClientSession() as session:
        for port in (gateway_port, admin_port):
            for probe in ("/healthz", "/readyz"):
                await _eventually_ok(session, f"http://127.0.0.1:{port}{probe}")
        route = toml(Path(path))["routes"][0]["prefix"]
        async with session.get(f"http://127.0.0.1:{gateway_port}{route}/x") as resp:
            assert resp.status == 401  # the route is there, and wants a key
            assert (await resp.json())["error"]["code"] == "missing_key"
        async with session.get(f"http://127.0.0.1:{admin_port}/v1/orgs",
                               headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200  # the operator token came from the environment

    for proc in (gateway, admin):
        code, out = await asyncio.to_thread(cli.stop, proc)
        assert code == 0, out
