"""The asyncpg pool both planes use: JSON columns decoded with orjson, short timeouts."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from gateway.settings import StoreSettings


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=_dumps, decoder=orjson.loads,
                                  schema="pg_catalog")


async def connect(url: str, timeout: float = 10.0, application_name: str | None = None
                  ) -> asyncpg.Connection:
    """A single connection with the same codecs as the pool (migrations, bootstrap, CLI);
    ``application_name`` names it in ``pg_stat_activity``, over the URL's."""
    settings = {"application_name": application_name} if application_name else None
    conn = await asyncpg.connect(url, timeout=timeout, server_settings=settings)
    await _init_connection(conn)
    return conn


async def create_pool(url: str, stores: StoreSettings) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url,
        min_size=stores.pool_min_size,
        max_size=stores.pool_max_size,
        timeout=stores.timeout_s,
        command_timeout=stores.timeout_s,
        init=_init_connection,
    )


# Writers take a connection (plain or from the pool) inside the caller's transaction;
# read-only functions also accept the pool itself.
Connection = asyncpg.Connection | PoolConnectionProxy
Queryable = Connection | asyncpg.Pool
