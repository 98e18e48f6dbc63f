"""Session-wide embedded PostgreSQL and Redis (or real servers named by
KEYSTILE_TEST_DATABASE_URL / KEYSTILE_TEST_REDIS_URL), migrated once; every test that uses
them starts from empty tables and an empty Redis database."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from admin_api.migrate import migrate
from gateway.database import connect
from keystile.embedded import EmbeddedPostgres, EmbeddedRedis

TABLES = "audit_log, key_usage_daily, key_secrets, keys, orgs, invalidation_outbox"


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
