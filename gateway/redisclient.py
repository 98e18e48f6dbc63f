"""The Redis client both planes use: a bounded pool that makes callers wait for a free
connection instead of opening one per concurrent command (which runs out of file
descriptors under load)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from gateway.settings import StoreSettings


def create_redis(url: str, stores: StoreSettings) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url, max_connections=stores.redis_max_connections, timeout=stores.timeout_s,
        socket_timeout=stores.timeout_s, socket_connect_timeout=stores.timeout_s)
    return Redis(connection_pool=pool)
