"""The ``keystile`` command: dev, admin, migrate, and the admin API's clients (orgs, keys,
usage)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import redis.exceptions

from admin_api.migrate import MigrationError, available, migrate
from gateway.database import connect
from gateway.settings import ConfigError, Settings, load
from gateway.tls import CertificateError, ServerTLS
from keystile import ops, serving
from keystile.adminclient import Failure
from keystile.embedded import StoreStartError
from keystile.redact import redact

log = logging.getLogger("keystile")


class CommandError(Exception):
    """A failure to report as one line, without a traceback."""


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _describe_store_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


async def _connect(settings: Settings) -> asyncpg.Connection:
    try:
        return await connect(settings.database_url, timeout=settings.stores.timeout_s)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CommandError(f"cannot reach PostgreSQL at {redact(settings.database_url)}: "
                           f"{_describe_store_error(exc)}") from None


async def _migrate(settings: Settings) -> None:
    conn = await _connect(settings)
    try:
        applied = await migrate(conn)
    except asyncpg.PostgresError as exc:
        raise CommandError(f"migration failed: {type(exc).__name__}: {exc}") from None
    finally:
        await conn.close()
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("database schema is up to date")


async def _check_schema(settings: Settings) -> None:
    conn = await _connect(settings)
    try:
        try:
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        except asyncpg.UndefinedTableError:
            done = set()
    finally:
        await conn.close()
    pending = [m for m in available() if m.version not in done]
    if pending:
        raise CommandError(f"the database schema is behind ({len(pending)} migration(s) "
                           "pending); run `keystile migrate` first")


async def _check_redis(settings: Settings) -> None:
    from gateway.redisclient import create_redis

    try:
        client = create_redis(settings.redis_url, settings.stores)
    except (ValueError, redis.exceptions.RedisClusterException) as exc:
        raise CommandError(f"invalid Redis URL {redact(settings.redis_url)}: {exc}") from None
    try:
        await client.ping()
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError,
            ValueError) as exc:
        raise CommandError(f"cannot reach Redis at {redact(settings.redis_url)}: "
                           f"{_describe_store_error(exc)}") from None
    finally:
        await client.aclose()


async def _admin(settings: Settings, host: str, port: int) -> None:
    from admin_api.accesslog import AccessLogger
    from admin_api.app import create_app

    if settings.admin.token is None:
        raise CommandError("no operator token: set KEYSTILE_ADMIN_TOKEN or [admin] token "
                           "(at least 16 characters)")
    await _check_schema(settings)
    await _check_redis(settings)
    tls = None
    if settings.admin.tls_cert_file is not None and settings.admin.tls_key_file is not None:
        try:
            tls = ServerTLS("admin API", settings.admin.tls_cert_file,
                            settings.admin.tls_key_file)
        except CertificateError as exc:  # changed since the configuration was read
            raise CommandError(f"[admin] TLS certificate: {exc}") from None
    stop = serving.stop_event()
    listener = serving.Listener("admin API", create_app(settings), host, port, AccessLogger,
                                tls)
    serving.reload_on_sighup([listener])
    runners = await serving.start([listener])
    print(f"keystile admin API listening on {listener.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await serving.stop(runners)


async def _rekey(settings: Settings, old_text: str) -> None:
    """Re-seals every recoverable secret from the old encryption key to the configured one."""
    from gateway.secretbox import SecretBoxError, open_, parse_key, seal

    if settings.encryption_key is None:
        raise CommandError("set KEYSTILE_ENCRYPTION_KEY to the new key")
    try:
        old, new = parse_key(old_text), parse_key(settings.encryption_key)
    except ValueError as exc:
        raise CommandError(f"KEYSTILE_OLD_ENCRYPTION_KEY {exc}") from None
    conn = await _connect(settings)
    try:
        async with conn.transaction():
            rows = await conn.fetch("SELECT id, secret_ciphertext FROM keys "
                                    "WHERE secret_ciphertext IS NOT NULL FOR UPDATE")
            for row in rows:
                try:
                    secret = open_(old, row["id"], bytes(row["secret_ciphertext"]))
                except SecretBoxError:
                    raise CommandError(f"the old key does not open key {row['id']}; nothing "
                                       "was changed") from None
                await conn.execute("UPDATE keys SET secret_ciphertext = $2 WHERE id = $1",
                                   row["id"], seal(new, row["id"], secret))
    finally:
        await conn.close()
    print(f"re-sealed {len(rows)} recoverable key(s) under the new encryption key")


def cmd_rekey(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    old = os.environ.get("KEYSTILE_OLD_ENCRYPTION_KEY")
    if not old:
        raise CommandError("set KEYSTILE_OLD_ENCRYPTION_KEY to the key being replaced")
    return _rekey(_settings(args), old)


def cmd_gateway(args: argparse.Namespace) -> None:
    from gateway.server import StartError, serve

    settings = _settings(args)
    if not settings.routes:
        raise CommandError("the configuration has no [[routes]]; the gateway would refuse "
                           "every request")
    gw = settings.gateway.model_copy(update={
        k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    settings = settings.model_copy(update={"gateway": gw})
    with _runner() as runner:
        runner.run(_check_schema(settings))
        runner.run(_check_redis(settings))
    try:
        serve(settings, args.workers or settings.gateway.workers)
    except StartError as exc:
        raise CommandError(str(exc)) from None


def _settings(args: argparse.Namespace) -> Settings:
    """The configuration file, then the environment, then the store URLs given as flags
    (validated like the rest)."""
    env = dict(os.environ)
    for flag, var in (("database_url", "KEYSTILE_DATABASE_URL"),
                      ("redis_url", "KEYSTILE_REDIS_URL")):
        if getattr(args, flag, None):
            env[var] = getattr(args, flag)
    return load(Path(args.config) if args.config else None, env)


def cmd_migrate(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    return _migrate(_settings(args))


def cmd_admin(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    settings = _settings(args)
    return _admin(settings, args.host or settings.admin.host, args.port or settings.admin.port)


def cmd_dev(args: argparse.Namespace) -> None:
    from keystile import dev

    with _runner() as runner:
        dev.run(dev.DevOptions(data_dir=Path(args.data_dir).resolve(),
                               admin_host=args.admin_host, admin_port=args.admin_port,
                               gateway_port=args.gateway_port,
                               upstream_port=args.upstream_port,
                               database_url=args.database_url, redis_url=args.redis_url),
                runner)


def cmd_cluster(args: argparse.Namespace) -> None:
    from keystile import cluster

    layout = cluster.Layout.free() if args.free_ports else cluster.Layout()
    cluster.run(layout, Path(args.data_dir).resolve())


def cmd_cluster_check(args: argparse.Namespace) -> None:
    import shutil
    import tempfile

    from keystile import cluster, clustercheck

    sizes = clustercheck.Sizes(keys=args.keys, load=args.load)
    layout = cluster.Layout.free()
    data_dir = (Path(args.data_dir).resolve() if args.data_dir
                else Path(tempfile.mkdtemp(prefix="keystile-cluster-check-")))
    verdicts = clustercheck.run(sizes, data_dir, layout)
    if args.json:
        Path(args.json).write_bytes(clustercheck.to_json(layout, verdicts))
    failed = [v.name for v in verdicts if not v.ok]
    if failed:
        raise CommandError(f"{len(failed)} check(s) failed: {'; '.join(failed)}; the "
                           f"topology's logs are kept in {data_dir / 'logs'}")
    if not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (1-1000)")
    return int(text)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return port


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a worker count (1-64)")
    return int(text)


def _database_url(text: str) -> str:
    if not text.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError("must be a postgresql:// URL")
    return text


def _redis_url(text: str) -> str:
    from gateway import redisurl

    try:
        return redisurl.check(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _store_flags(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--database-url", type=_database_url, metavar="URL",
                         help=f"PostgreSQL (postgresql://user:password@host:port/db); {what}")
    command.add_argument("--redis-url", type=_redis_url, metavar="URL",
                         help="Redis: redis://host:port/db, or redis+cluster://host:port"
                         f"[,host:port...] for a Redis Cluster; {what}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="keystile", description="API-key gateway and admin API")
    sub = top.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the whole stack locally with embedded stores")
    dev.add_argument("--data-dir", default="./.keystile", help="where the stores keep data")
    dev.add_argument("--admin-host", default="127.0.0.1")
    dev.add_argument("--admin-port", type=_port, default=8081)
    dev.add_argument("--gateway-port", type=_port, default=8080, help="the gateway listener")
    dev.add_argument("--upstream-port", type=_port, default=9000, help="the demo echo upstream")
    _store_flags(dev, "instead of the embedded one")
    dev.set_defaults(func=cmd_dev)

    clu = sub.add_parser("cluster", help="a production-shaped topology on this machine: "
                         "PostgreSQL primary and replica, a Redis Cluster, the admin API and "
                         "two gateway hosts (127.0.0.2:8080, 127.0.0.3:8080)")
    clu.add_argument("--data-dir", default="./.keystile/cluster",
                     help="where its stores and logs live (emptied at each start)")
    clu.add_argument("--free-ports", action="store_true",
                     help="free ports on the same addresses instead of the fixed ones")
    clu.set_defaults(func=cmd_cluster)

    check = sub.add_parser("cluster-check", help="start a cluster on free ports and prove its "
                           "failure behaviour: key propagation, exact limits, a Redis master, "
                           "a gateway host and the PostgreSQL primary lost")
    check.add_argument("--keys", type=_count, default=20,
                       help="new keys and revocations timed (default 20)")
    check.add_argument("--load", type=_count, default=16,
                       help="requests kept in flight during the failures (default 16)")
    check.add_argument("--json", metavar="PATH", help="also write the verdicts and figures here")
    check.add_argument("--data-dir", help="where the cluster lives (kept); by default a "
                       "temporary folder, removed when every check passed")
    check.set_defaults(func=cmd_cluster_check)

    admin = sub.add_parser("admin", help="serve the admin API")
    admin.add_argument("--config", help="TOML configuration file")
    admin.add_argument("--host", help="overrides [admin] host")
    admin.add_argument("--port", type=_port, help="overrides [admin] port")
    _store_flags(admin, "overrides database_url / redis_url and the environment")
    admin.set_defaults(func=cmd_admin)

    gateway = sub.add_parser("gateway", help="serve the gateway (the authenticating proxy)")
    gateway.add_argument("--config", help="TOML configuration file with [[routes]]")
    gateway.add_argument("--workers", type=_workers,
                         help="worker processes sharing the port (overrides [gateway] workers)")
    gateway.add_argument("--host", help="overrides [gateway] host")
    gateway.add_argument("--port", type=_port, help="overrides [gateway] port")
    _store_flags(gateway, "overrides database_url / redis_url and the environment")
    gateway.set_defaults(func=cmd_gateway)

    rekey = sub.add_parser("rekey", help="re-seal recoverable keys under a new encryption key "
                           "(KEYSTILE_OLD_ENCRYPTION_KEY -> KEYSTILE_ENCRYPTION_KEY)")
    rekey.add_argument("--config", help="TOML configuration file")
    rekey.set_defaults(func=cmd_rekey)

    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.add_argument("--config", help="TOML configuration file")
    mig.set_defaults(func=cmd_migrate)

    ops.add_parsers(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        result = func(args)
        if asyncio.iscoroutine(result):
            with _runner() as runner:
                runner.run(result)
    except (CommandError, ConfigError, StoreStartError, MigrationError,
            serving.ServeError) as exc:
        print(f"keystile: error: {exc}", file=sys.stderr)
        return 1
    except Failure as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
