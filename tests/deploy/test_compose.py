"""deploy/compose.yaml as docker compose itself resolves it: valid, secrets only from the
environment (each required), a one-shot migrate the servers wait for, two gateways."""

from __future__ import annotations

import asyncio
import sys
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from gateway.settings import load
from keystile.embedded import free_port
from tests.deploy.conftest import ALL_INTERFACES, DEPLOY, Compose, toml

SECRETS = {"KEYSTILE_POSTGRES_PASSWORD": "pg-secret-1",
           "KEYSTILE_REDIS_PASSWORD": "redis-secret-2",
           "KEYSTILE_ADMIN_TOKEN": "operator-token-0123456789"}
ROLES = {"migrate", "admin", "gateway"}
CONFIG = "/etc/keystile/keystile.toml"


@pytest.fixture(scope="module")
def model(compose: Compose) -> dict[str, Any]:
    got = compose.run("config", "--format", "json", env=SECRETS)
    assert got.returncode == 0, got.stderr
    resolved: dict[str, Any] = orjson.loads(got.stdout)
    return resolved


def test_compose_config_passes_with_the_secrets_set(compose: Compose) -> None:
    got = compose.run("config", "-q", env=SECRETS)
    assert got.returncode == 0, got.stderr
    assert got.stdout == ""


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_a_missing_secret_stops_compose_naming_it(compose: Compose, missing: str) -> None:
    got = compose.run("config", "-q", env={k: v for k, v in SECRETS.items() if k != missing})
    assert got.returncode != 0
    assert f"required variable {missing} is missing a value: set {missing}" in got.stderr


def test_services_and_their_order(model: dict[str, Any]) -> None:
    services = model["services"]
    assert set(services) == {"postgres", "redis", "migrate", "admin", "gateway", "echo"}
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["build"]["dockerfile"] == "deploy/Dockerfile"
    for name in ("admin", "gateway"):
        after = services[name]["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully", name
        assert after["redis"]["condition"] == "service_healthy", name
    assert services["gateway"]["deploy"]["replicas"] == 2
    for store in ("postgres", "redis"):
        assert services[store]["healthcheck"]["test"][0] == "CMD"


def test_one_image_runs_every_role_with_the_mounted_config(model: dict[str, Any]) -> None:
    services = model["services"]
    images = {services[name]["image"] for name in (*ROLES, "echo")}
    assert len(images) == 1
    for role in ROLES:
        service = services[role]
        assert service.get("entrypoint") is None  # the image's: keystile
        assert service["command"] == [role, "--config", CONFIG]
        mounts = {v["target"]: v for v in service["volumes"]}
        assert mounts[CONFIG]["source"] == str(DEPLOY / "keystile.toml")
        assert mounts[CONFIG]["read_only"] is True
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]


def test_secrets_come_from_the_environment_and_only_where_needed(
        model: dict[str, Any]) -> None:
    services = model["services"]
    database = urlsplit(services["admin"]["environment"]["KEYSTILE_DATABASE_URL"])
    redis = urlsplit(services["admin"]["environment"]["KEYSTILE_REDIS_URL"])
    assert (database.hostname, database.port, database.password) == (
        "postgres", 5432, SECRETS["KEYSTILE_POSTGRES_PASSWORD"])
    assert (redis.hostname, redis.port, redis.password) == (
        "redis", 6379, SECRETS["KEYSTILE_REDIS_PASSWORD"])
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == SECRETS[
        "KEYSTILE_POSTGRES_PASSWORD"]
    assert SECRETS["KEYSTILE_REDIS_PASSWORD"] in services["redis"]["command"]
    for role in ROLES:
        env = services[role]["environment"]
        assert env["KEYSTILE_DATABASE_URL"] == database.geturl()
        has_token = "KEYSTILE_ADMIN_TOKEN" in env
        assert has_token == (role == "admin"), role  # the operator token: the admin API only
    assert services["admin"]["environment"]["KEYSTILE_ADMIN_TOKEN"] == SECRETS[
        "KEYSTILE_ADMIN_TOKEN"]
    # ...and the file itself holds none of them.
    text = (DEPLOY / "compose.yaml").read_text()
    assert not any(secret in text for secret in SECRETS.values())


def test_the_config_file_works_with_these_services(model: dict[str, Any]) -> None:
    """The mounted TOML is valid with compose's environment, listens where compose
    publishes and checks health, and its example route reaches the echo service."""
    services = model["services"]
    settings = load(DEPLOY / "keystile.toml", services["admin"]["environment"])
    assert settings.admin.token == SECRETS["KEYSTILE_ADMIN_TOKEN"]
    assert (settings.gateway.host, settings.admin.host) == (ALL_INTERFACES, ALL_INTERFACES)
    assert {p["target"] for p in services["gateway"]["ports"]} == {settings.gateway.port}
    assert {p["target"] for p in services["admin"]["ports"]} == {settings.admin.port}
    health = urlsplit(services["admin"]["environment"]["KEYSTILE_HEALTHCHECK_URL"])
    assert (health.port, health.path) == (settings.admin.port, "/healthz")
    echo = urlsplit(settings.routes[0].upstream)
    assert echo.hostname == "echo" and echo.hostname in services
    assert str(echo.port) in " ".join(services["echo"]["entrypoint"])
    assert toml(DEPLOY / "keystile.toml")["gateway"]["workers"] == 2


async def test_the_example_upstream_serves_what_the_route_expects(
        model: dict[str, Any]) -> None:
    """The echo service's own command (on a free port: 9000 is held during tests)."""
    entrypoint = model["services"]["echo"]["entrypoint"]
    assert entrypoint[:2] == ["python", "-c"] and "port=9000" in entrypoint[2]
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", entrypoint[2].replace("port=9000", f"port={port}"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.post(f"http://127.0.0.1:{port}/echo/x?a=1",
                                            data=b"hi") as resp:
                        seen = await resp.json()
                        break
                except aiohttp.ClientConnectionError:
                    assert asyncio.get_running_loop().time() < deadline, "echo never listened"
                    await asyncio.sleep(0.05)
        assert (seen["method"], seen["path"], seen["query"], seen["body"]) == (
            "POST", "/echo/x", "a=1", "hi")
    finally:
        proc.terminate()
        await proc.wait()
