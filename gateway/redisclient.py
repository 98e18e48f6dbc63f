"""The Redis client both planes use: a bounded pool that makes callers wait for a free
connection instead of opening one per concurrent command (which runs out of file
descriptors under load). Every round trip (one command, or one pipeline) is counted in
``keystile_redis_round_trips_total``."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

from gateway.metrics import REDIS_ROUND_TRIPS
from gateway.settings import StoreSettings

_COUNTING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _counting(base: type[AbstractConnection]) -> type[AbstractConnection]:
    if base in _COUNTING:
        return _COUNTING[base]

    class Counting(base):  # type: ignore[valid-type,misc]
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            REDIS_ROUND_TRIPS.inc()
            await super().send_packed_command(command, check_health)

    Counting.__name__ = f"Counting{base.__name__}"
    _COUNTING[base] = Counting
    return Counting


def create_redis(url: str, stores: StoreSettings) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url, max_connections=stores.redis_max_connections, timeout=stores.timeout_s,
        socket_timeout=stores.timeout_s, socket_connect_timeout=stores.timeout_s)
    pool.connection_class = _counting(pool.connection_class)
    return Redis(connection_pool=pool)
