"""The production commands: one-line errors, migrate, and the admin server."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from keystile.embedded import free_port
from tests.conftest import Stores
from tests.keystile.conftest import Cli

TOKEN = "cli-test-operator-token-000"


def _one_line_error(result: object, *needles: str) -> None:
    stderr = result.stderr.strip()  # type: ignore[attr-defined]
    assert result.returncode == 1  # type: ignore[attr-defined]
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("keystile: error: ")
    for needle in needles:
        assert needle in stderr, stderr


def test_migrate_reports_up_to_date(cli: Cli, stores: Stores) -> None:
    result = cli.run("migrate", env={"KEYSTILE_DATABASE_URL": stores.database_url})
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_unreachable_database_is_one_line_without_password(cli: Cli) -> None:
    url = f"postgresql://keystile:s3cret-pw@127.0.0.1:{free_port()}/keystile"
    result = cli.run("migrate", env={"KEYSTILE_DATABASE_URL": url})
    _one_line_error(result, "cannot reach PostgreSQL", "keystile:***@127.0.0.1")
    assert "s3cret-pw" not in result.stderr


def test_invalid_config_is_one_line(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[admin]\nport = 'x'\n")
    _one_line_error(cli.run("admin", "--config", str(bad)), "admin.port")
    _one_line_error(cli.run("migrate", "--config", str(tmp_path / "missing.toml")),
                    "does not exist")


def test_admin_needs_an_operator_token_and_reachable_redis(cli: Cli, stores: Stores) -> None:
    env = {"KEYSTILE_DATABASE_URL": stores.database_url, "KEYSTILE_REDIS_URL": stores.redis_url,
           "KEYSTILE_ADMIN_TOKEN": ""}
    _one_line_error(cli.run("admin", env=env), "KEYSTILE_ADMIN_TOKEN")
    env |= {"KEYSTILE_ADMIN_TOKEN": TOKEN,
            "KEYSTILE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    _one_line_error(cli.run("admin", env=env), "cannot reach Redis")


def test_admin_serves_until_sigterm(cli: Cli, stores: Stores, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "keystile.toml"
    config.write_text(f'redis_url = "{stores.redis_url}"\n[admin]\nport = {port}\n')
    proc = cli.start("admin", "--config", str(config),
                     env={"KEYSTILE_DATABASE_URL": stores.database_url,
                          "KEYSTILE_ADMIN_TOKEN": TOKEN})
    cli.read_until(proc, f"listening on http://127.0.0.1:{port}")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/orgs",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    code, out = cli.stop(proc)
    assert code == 0
    # One JSON access line per request, naming the actor but never the credential.
    access = [json.loads(line.split(" keystile.access ", 1)[1]) for line in out.splitlines()
              if " keystile.access " in line]
    assert access[0]["path"] == "/v1/orgs" and access[0]["status"] == 200
    assert access[0]["actor"] == "operator" and access[0]["request_id"]
    assert TOKEN not in out


def test_more_misconfigurations_are_one_line(cli: Cli, stores: Stores, tmp_path: Path) -> None:
    _one_line_error(cli.run("admin", env={"KEYSTILE_REDIS_URL": "foo://bar"}), "redis_url")
    bad = tmp_path / "table.toml"
    bad.write_text('admin = "x"\n')
    _one_line_error(cli.run("admin", "--config", str(bad),
                            env={"KEYSTILE_ADMIN_TOKEN": TOKEN}), "admin must be a table")
    _one_line_error(cli.run("dev", "--data-dir", str(tmp_path / "d"),
                            env={"KEYSTILE_ADMIN_TOKEN": "short"}), "at least 16")
    result = cli.run("gateway", "--redis-url", "redis+cluster://u:hunter2@a:7000/1")
    assert result.returncode == 2 and "only database 0" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    result = cli.run("admin", "--database-url", "mysql://u:hunter2@a/db")
    assert result.returncode == 2 and "postgresql://" in result.stderr
    assert "hunter2" not in result.stderr
    result = cli.run("admin", "--port", "70000")
    assert result.returncode == 2 and "not a TCP port" in result.stderr
    assert "Traceback" not in result.stderr


def test_admin_refuses_nuxera_without_a_jwt_secret(cli: Cli, stores: Stores,
                                                   tmp_path: Path) -> None:
    config = tmp_path / "nuxera.toml"
    config.write_text('dialects = ["nuxera"]\n')
    env = {"KEYSTILE_DATABASE_URL": stores.database_url, "KEYSTILE_REDIS_URL": stores.redis_url,
           "KEYSTILE_ADMIN_TOKEN": TOKEN, "KEYSTILE_JWT_SECRET": ""}
    _one_line_error(cli.run("admin", "--config", str(config), env=env), "KEYSTILE_JWT_SECRET")


def test_rekey_reseals_recoverable_keys(cli: Cli, stores: Stores) -> None:
    import asyncio

    from gateway.database import connect
    from gateway.secretbox import new_key, open_, parse_key, seal

    old, new = new_key(), new_key()

    async def seed() -> str:
        conn = await connect(stores.database_url)
        try:
            org = await conn.fetchval(
                "INSERT INTO orgs (id, name, provider_id, key_prefix) VALUES "
                "('org_rekeyAAAAAAAAAAAAAAAAA', 'r', 'rekey', 'ks') RETURNING id")
            await conn.execute(
                "INSERT INTO keys (id, org_id, prefix, key_prefix, recoverable, "
                "secret_ciphertext) VALUES ('key_rekeyAAAAAAAAAAAAAAAAA', $1, 'x', 'od', true, "
                "$2)", org, seal(parse_key(old), "key_rekeyAAAAAAAAAAAAAAAAA", "SECRETSECRET1234"))
            return str(org)
        finally:
            await conn.close()

    async def sealed() -> bytes:
        conn = await connect(stores.database_url)
        try:
            value = await conn.fetchval("SELECT secret_ciphertext FROM keys WHERE id = "
                                        "'key_rekeyAAAAAAAAAAAAAAAAA'")
            await conn.execute("DELETE FROM orgs WHERE id = 'org_rekeyAAAAAAAAAAAAAAAAA'")
            return bytes(value)
        finally:
            await conn.close()

    asyncio.run(seed())
    env = {"KEYSTILE_DATABASE_URL": stores.database_url, "KEYSTILE_ENCRYPTION_KEY": new,
           "KEYSTILE_OLD_ENCRYPTION_KEY": old}
    result = cli.run("rekey", env=env)
    assert result.returncode == 0, result.stderr
    assert "re-sealed 1 recoverable key" in result.stdout
    box = asyncio.run(sealed())
    assert open_(parse_key(new), "key_rekeyAAAAAAAAAAAAAAAAA", box) == "SECRETSECRET1234"


def test_store_flags_override_the_environment_and_reach_a_cluster(
        cli: Cli, stores: Stores, cluster_url: str) -> None:
    """``--redis-url`` / ``--database-url`` win over KEYSTILE_*; the start-up check reaches a
    cluster too, and an unreachable one is one line without its password."""
    port = free_port()
    proc = cli.start("admin", "--port", str(port), "--redis-url", cluster_url,
                     "--database-url", stores.database_url,
                     env={"KEYSTILE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x",
                          "KEYSTILE_REDIS_URL": "redis://127.0.0.1:1/0",
                          "KEYSTILE_ADMIN_TOKEN": TOKEN})
    cli.read_until(proc, f"listening on http://127.0.0.1:{port}")
    code, _ = cli.stop(proc)
    assert code == 0
    dead = f"redis+cluster://u:hunter2@127.0.0.1:{free_port()}"
    result = cli.run("admin", "--redis-url", dead, "--database-url", stores.database_url,
                     env={"KEYSTILE_ADMIN_TOKEN": TOKEN})
    _one_line_error(result, "cannot reach Redis at redis+cluster://u:***@127.0.0.1:")
    assert "hunter2" not in result.stderr
