"""Session-wide embedded PostgreSQL and Redis (or real servers named by
KEYSTILE_TEST_DATABASE_URL / KEYSTILE_TEST_REDIS_URL), migrated once; every test that uses
them starts from empty tables and an empty Redis database. The ports a default Keystile
listens on are held for the whole run, so a test that binds one fails loudly."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time as clock
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from admin_api.migrate import migrate
from gateway.database import connect
from keystile.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedRedisCluster

# What ``keystile dev`` and the default config listen on (gateway, admin API, demo upstream).
DEFAULT_PORTS = (8080, 8081, 9000)
TABLES = ("audit_log, key_usage_daily, key_secrets, keys, orgs, invalidation_outbox, "
          "webhook_attempts, webhook_deliveries, webhook_events, webhook_endpoints, "
          "webhook_marks, usage_minutes, usage_hours, usage_org_minutes, usage_org_hours, "
          "console_sessions")


@dataclass(frozen=True)
class Stores:
    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None
    redis: EmbeddedRedis | None


async def _migrate(url: str) -> None:
    conn = await connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session", autouse=True)
def default_ports_held() -> Iterator[list[int]]:
    """Binds Keystile's default ports on 127.0.0.1 for the whole run when they are free. The
    suite must pass while another Keystile (or anything) holds them: no test may rely on a
    fixed port, and one that tries gets "address in use" here rather than on a user's
    machine. A port something else holds already is busy anyway, which proves the same."""
    held: list[socket.socket] = []
    try:
        for port in DEFAULT_PORTS:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # Bound, not listening: binding it fails (no SO_REUSEADDR/SO_REUSEPORT here,
                # so a server asking for either is refused too) and connecting is refused at
                # once, where a listener that never accepts would leave a client hanging.
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            held.append(sock)
        yield [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    base: Path = tmp_path_factory.mktemp("stores")
    pg = rd = None
    db_url = os.environ.get("KEYSTILE_TEST_DATABASE_URL")
    redis_url = os.environ.get("KEYSTILE_TEST_REDIS_URL")
    try:
        if not db_url:
            pg = EmbeddedPostgres(base / "postgres", durable=False).start()
            db_url = pg.url
        if not redis_url:
            rd = EmbeddedRedis(base / "redis", durable=False).start()
            redis_url = rd.url
        asyncio.run(_migrate(db_url))
        yield Stores(db_url, redis_url, pg, rd)
    finally:
        if rd is not None:
            rd.stop()
        if pg is not None:
            pg.stop()


@pytest.fixture(scope="session")
def pg_replica(stores: Stores, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[EmbeddedPostgres]:
    """A streaming replica of the run's embedded PostgreSQL: started only when a test asks
    for it, once per run."""
    if stores.postgres is None:
        pytest.skip("a replica is made of the embedded PostgreSQL; KEYSTILE_TEST_DATABASE_URL "
                    "names another server")
    replica = EmbeddedPostgres.replica_of(stores.postgres, tmp_path_factory.mktemp("replica"))
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """Six more redis-server processes (three masters, three replicas): started only when a
    test asks for them, once per run."""
    cluster = EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _revive(cluster: EmbeddedRedisCluster) -> None:
    """Starts the nodes a test killed again (they rejoin as replicas) and waits until they
    have caught up, so every master has a replica to fail over to."""
    dead = set(cluster.procs) - set(cluster.alive())
    for port in dead:
        cluster.restart(port)
    deadline = clock.monotonic() + 30
    while not all("master_link_status:up" in cluster.cli(port, "INFO", "replication")
                  for port in dead):
        assert clock.monotonic() < deadline, "a restarted Redis node never caught up"
        clock.sleep(0.05)


@pytest.fixture
def cluster_url(redis_cluster: EmbeddedRedisCluster) -> Iterator[str]:
    """The cluster's URL, every slot served (a test before may have failed a master over)
    and every master emptied. Nodes a test killed are started again as soon as it ends:
    left down until the next test that wants the cluster, their ports could be taken
    meanwhile (a cluster bus port lies in the range outgoing connections draw from)."""
    _revive(redis_cluster)
    redis_cluster.wait_ok()
    redis_cluster.flush()
    yield redis_cluster.url
    _revive(redis_cluster)


ALLOW_FLUSHALL = "KEYSTILE_TEST_ALLOW_FLUSHALL"


@pytest.fixture
def own_redis(stores: Stores) -> str:
    """The Redis URL, for a test that empties the whole server (``FLUSHALL``, every
    database): only a Redis this run started, unless KEYSTILE_TEST_ALLOW_FLUSHALL=1 says the
    server named by KEYSTILE_TEST_REDIS_URL may be wiped."""
    if stores.redis is None and os.environ.get(ALLOW_FLUSHALL) != "1":
        pytest.skip(f"FLUSHALL would wipe every database of the Redis at "
                    f"KEYSTILE_TEST_REDIS_URL; set {ALLOW_FLUSHALL}=1 to allow it")
    return stores.redis_url


# The longest a test that counts quota or daily usage takes, with room for a busy machine.
PERIOD_MARGIN_S = 90.0


def seconds_to_utc_midnight(now: datetime) -> float:
    """Until the next UTC midnight — where every quota period (day, week, month) and the
    daily usage history turn over."""
    tomorrow = (now + timedelta(days=1)).date()
    return (datetime.combine(tomorrow, time(), UTC) - now).total_seconds()


@pytest.fixture(autouse=True)
def same_utc_day() -> None:
    """A test that starts within PERIOD_MARGIN_S of UTC midnight waits for midnight to pass
    (the condition is the clock itself), so no quota or daily count it makes is split across
    two periods: a counter reset in the middle of a test is not what it tests."""
    left = seconds_to_utc_midnight(datetime.now(UTC))
    if left < PERIOD_MARGIN_S:
        deadline = clock.monotonic() + left + 5
        while seconds_to_utc_midnight(datetime.now(UTC)) < PERIOD_MARGIN_S:
            assert clock.monotonic() < deadline, "the UTC clock did not pass midnight"
            clock.sleep(0.1)


@pytest.fixture
async def db(stores: Stores) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, with every table emptied first."""
    conn = await connect(stores.database_url)
    await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    client = redis.asyncio.Redis.from_url(stores.redis_url)
    await client.flushdb()
    await client.aclose()
    yield conn
    await conn.close()
