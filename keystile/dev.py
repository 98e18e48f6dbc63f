"""``keystile dev``: the whole stack on one machine — embedded PostgreSQL and Redis under
the data folder (or external stores given by ``--database-url`` / ``--redis-url``, e.g. a
Redis Cluster), migrations, a demo organisation, the echo upstream and the admin API."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from admin_api.accesslog import AccessLogger
from admin_api.app import create_app as create_admin_app
from admin_api.changes import Changes, drain
from admin_api.migrate import migrate
from gateway.accesslog import AccessLogger as GatewayAccessLogger
from gateway.app import create_app as create_gateway_app
from gateway.database import connect
from gateway.redisclient import create_redis
from gateway.secretbox import new_key, parse_key
from gateway.settings import MIN_TOKEN_LEN, AdminSettings, ConfigError, Settings, load
from keystile import echo, serving
from keystile.bootstrap import DEMO_PROVIDER, DemoKeys, ensure_customer_key, ensure_demo
from keystile.embedded import EmbeddedPostgres, EmbeddedRedis, write_secret
from keystile.redact import redact

DEV_CONFIG = Path(__file__).resolve().parents[1] / "config" / "dev.toml"
DEV_UPSTREAM = "http://127.0.0.1:9000"
READY = "Keystile is ready."


@dataclass(frozen=True, slots=True)
class DevOptions:
    data_dir: Path
    admin_host: str
    admin_port: int
    gateway_port: int
    upstream_port: int
    database_url: str | None = None  # external PostgreSQL instead of the embedded one
    redis_url: str | None = None  # external Redis (or Redis Cluster) instead of the embedded


def operator_token(data_dir: Path) -> str:
    """KEYSTILE_ADMIN_TOKEN if set, else a token generated once and kept in the data folder."""
    given = os.environ.get("KEYSTILE_ADMIN_TOKEN")
    if given:
        if len(given) < MIN_TOKEN_LEN:
            raise ConfigError(f"KEYSTILE_ADMIN_TOKEN must be at least {MIN_TOKEN_LEN} "
                              "characters")
        return given
    path = data_dir / "admin-token"
    if not path.exists():
        write_secret(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def banner(opts: DevOptions, token: str, demo: DemoKeys, customer: str, postgres: str,
           redis: str) -> str:
    """``postgres`` and ``redis``: the store URLs as they may be shown."""
    admin = f"http://{opts.admin_host}:{opts.admin_port}"
    gateway = f"http://127.0.0.1:{opts.gateway_port}"
    nuxera_jwt = demo_jwt(jwt_secret(opts.data_dir))
    variables = (f"GATEWAY={gateway} ADMIN={admin} TOKEN={token} ROOT={demo.root_key} "
                 f"SUB={demo.sub_key} JWT={nuxera_jwt}")
    return f"""
Keystile dev stack is up (Ctrl-C stops everything).

  gateway        {gateway}   (routes: /echo needs a key, /public does not)
  admin API      {admin}   (OpenAPI: {admin}/openapi.json)
  console        {admin}/console   (log in with the operator token below)
  echo upstream  http://127.0.0.1:{opts.upstream_port}
  PostgreSQL     {postgres}
  Redis          {redis}
  data folder    {opts.data_dir}
  metrics        {gateway}/metrics (gateway), {admin}/metrics (admin, operator token)
  logs           this terminal: one JSON line per request (keystile.access), never a key

  operator token  {token}
  root key        {demo.root_key}   (organisation {demo.org_id}, provider "demo")
  sub key         {demo.sub_key}   (scopes: echo:read)

The two demo keys get fresh secrets on every start; keys you create are kept.

Shell variables for the examples in README.md:
  {variables}

Try:
  curl -s '{gateway}/echo/hello?x=1' -H 'X-API-Key: {demo.sub_key}'
  curl -s -X POST {gateway}/echo/orders -H 'X-API-Key: {demo.root_key}' -d '{{"id": 1}}'
  curl -s {gateway}/public/anything
  curl -s {gateway}/_keystile/usage -H 'X-API-Key: {demo.sub_key}'
  curl -s {admin}/v1/keys -H 'Authorization: Bearer {token}'
  curl -s {admin}/v1/keys/self -H 'X-API-Key: {demo.sub_key}'
  curl -s -X POST {admin}/v1/keys -H 'X-API-Key: {demo.root_key}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"name": "clinic key", "owner_id": "clinic-42", "scopes": ["echo:read"]}}'
  curl -s -X POST {admin}/v1/verify -H 'X-API-Key: {demo.root_key}' \\
       -d '{{"key": "{demo.sub_key}", "scopes": ["echo:read"]}}'
  curl -s {admin}/v1/audit -H 'Authorization: Bearer {token}'
  curl -s 'http://127.0.0.1:{opts.upstream_port}/hello?x=1'

Seed dialects (management on the admin listener, clients through the gateway):
  curl -s {admin}/api/v1/api-key -H 'X-Scrubs-Clinic-Api-Key: {demo.sub_key}' \\
       -H 'X-Scrubs-Clinic-Provider: demo'
  curl -s {gateway}/scrubs/notes -H 'X-Scrubs-Clinic-Api-Key: {demo.sub_key}' \\
       -H 'X-Scrubs-Clinic-Provider: demo'
  curl -s {admin}/api/v1/apikey/apikeys -H 'Authorization: Bearer {demo.root_key}'
  curl -s {gateway}/scrubbe/incidents -H 'X-API-Key: {demo.sub_key}'
  curl -s {admin}/api/apiKeys -H 'Authorization: Bearer {nuxera_jwt}'
  curl -s {gateway}/nuxera/transcribe -H 'x-api-key: {demo.sub_key}'
  curl -s {admin}/apikeys -H 'Authorization: ODFHIR demo/{demo.root_key}'
  curl -s {gateway}/opendental/patients -H 'Authorization: ODFHIR demo/{customer}'
  curl -s {admin}/api/v1/api-keys -H 'X-API-Key: {demo.root_key}'
  curl -s {gateway}/regen/orders -H 'X-API-Key: {demo.sub_key}'

{READY}
"""


def jwt_secret(data_dir: Path) -> str:
    """KEYSTILE_JWT_SECRET if set, else one generated once and kept in the data folder (only
    ``keystile dev`` does this; ``keystile admin`` requires it to be configured)."""
    if os.environ.get("KEYSTILE_JWT_SECRET"):
        return os.environ["KEYSTILE_JWT_SECRET"]
    path = data_dir / "jwt-secret"
    if not path.exists():
        write_secret(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def encryption_key(data_dir: Path) -> str:
    """KEYSTILE_ENCRYPTION_KEY if set, else one generated once and kept in the data folder
    (only ``keystile dev`` does this; losing it makes recoverable keys unrecoverable)."""
    if os.environ.get("KEYSTILE_ENCRYPTION_KEY"):
        return os.environ["KEYSTILE_ENCRYPTION_KEY"]
    path = data_dir / "encryption-key"
    if not path.exists():
        write_secret(path, new_key())
    return path.read_text().strip()


def demo_jwt(secret: str) -> str:
    """A Nuxera management token for demo user 1 of the demo organisation, valid 30 days."""
    claims = {"sub": "1", "org": DEMO_PROVIDER, "exp": int(time.time()) + 30 * 86400}
    return jwt.encode(claims, secret, algorithm="HS256")


def dev_settings(opts: DevOptions, token: str, database_url: str, redis_url: str) -> Settings:
    """``config/dev.toml`` with the stores, ports and operator token of this run."""
    base = load(DEV_CONFIG, {"KEYSTILE_JWT_SECRET": jwt_secret(opts.data_dir),
                             "KEYSTILE_ENCRYPTION_KEY": encryption_key(opts.data_dir)})
    upstream = f"http://127.0.0.1:{opts.upstream_port}"
    routes = [r.model_copy(update={"upstream": r.upstream.replace(DEV_UPSTREAM, upstream)})
              for r in base.routes]
    return base.model_copy(update={
        "database_url": database_url, "redis_url": redis_url,
        "admin": AdminSettings(host=opts.admin_host, port=opts.admin_port, token=token),
        "gateway": base.gateway.model_copy(update={"host": "127.0.0.1",
                                                   "port": opts.gateway_port}),
        "routes": routes})


async def _serve(opts: DevOptions, token: str, database_url: str, redis_url: str,
                 shown: tuple[str, str]) -> None:
    settings = dev_settings(opts, token, database_url, redis_url)
    conn = await connect(database_url)
    client = create_redis(redis_url, settings.stores)
    try:
        await migrate(conn)
        demo = await ensure_demo(conn, Changes())
        customer = await ensure_customer_key(conn, demo.org_id,
                                             parse_key(encryption_key(opts.data_dir)))
        # Redis keeps its data across runs: the old demo secrets' shared records must go.
        await drain(conn, client)
    finally:
        await client.aclose()
        await conn.close()
    stop = serving.stop_event()
    runners = await serving.start([
        serving.Listener("admin API", create_admin_app(settings), opts.admin_host,
                         opts.admin_port, AccessLogger),
        serving.Listener("echo upstream", echo.create_app(), "127.0.0.1", opts.upstream_port),
        serving.Listener("gateway", create_gateway_app(settings), "127.0.0.1",
                         opts.gateway_port, GatewayAccessLogger),
    ])
    try:
        print(banner(opts, token, demo, customer, *shown), flush=True)
        await stop.wait()
        print("stopping…", flush=True)
    finally:
        await serving.stop(runners)


def run(opts: DevOptions, runner: asyncio.Runner) -> None:
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    token = operator_token(opts.data_dir)  # a bad token fails before anything starts
    pg = None if opts.database_url else EmbeddedPostgres(opts.data_dir / "postgres")
    redis = None if opts.redis_url else EmbeddedRedis(opts.data_dir / "redis")
    try:
        if pg is not None:
            pg.start()
        if redis is not None:
            redis.start()
        # The embedded stores' URLs are shown whole (local, for the examples); others never
        # with their password.
        database_url = pg.url if pg is not None else str(opts.database_url)
        redis_url = redis.url if redis is not None else str(opts.redis_url)
        shown = (pg.url if pg is not None else redact(database_url),
                 redis.url if redis is not None else redact(redis_url))
        runner.run(_serve(opts, token, database_url, redis_url, shown))
    finally:
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.stop()
