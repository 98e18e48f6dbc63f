"""The Redis client both planes use: a bounded pool that makes callers wait for a free
connection instead of opening one per concurrent command (which runs out of file
descriptors under load). Every round trip (one command, or one pipeline) is counted in
``keystile_redis_round_trips_total``.

Connections to a Redis that restarted are found dead before a command is written to them:
the pool checks a connection it hands out for a closed socket, and one idle for longer than
``HEALTH_CHECK_INTERVAL_S`` is PINGed first (and re-made if the PING fails). A call that still
fails on a connection error is retried once — unless it runs under ``at_most_once()`` (spends,
refunds, usage adjustments), which is retried only when nothing of it was written (the
failure came while connecting or health-checking), so a script never runs twice."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from gateway.metrics import REDIS_ROUND_TRIPS
from gateway.settings import StoreSettings

HEALTH_CHECK_INTERVAL_S = 1.0  # a connection idle this long is PINGed before it is used
RETRIES = 1  # a failed call is tried once more on a fresh connection

T = TypeVar("T")

_AT_MOST_ONCE: contextvars.ContextVar[bool] = contextvars.ContextVar("redis_at_most_once",
                                                                     default=False)


class NotSent(ConnectionError):
    """The connection failed before any byte of the command was written: Redis never saw it,
    so trying again cannot run it twice."""


@contextlib.contextmanager
def at_most_once() -> Iterator[None]:
    """Redis calls made inside must not run twice (they spend): they are retried only when
    they failed before being sent."""
    token = _AT_MOST_ONCE.set(True)
    try:
        yield
    finally:
        _AT_MOST_ONCE.reset(token)


class _Retry(Retry):
    """redis-py's retry, but under ``at_most_once()`` only for what was never sent."""

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Any,
                              is_retryable: Callable[[Exception], bool] | None = None,
                              with_failure_count: bool = False) -> T:
        def retryable(error: Exception) -> bool:
            if _AT_MOST_ONCE.get() and not isinstance(error, NotSent):
                return False
            return is_retryable is None or is_retryable(error)

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


_CONNECTIONS: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _connection_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    if base in _CONNECTIONS:
        return _CONNECTIONS[base]

    class Connection(base):  # type: ignore[valid-type,misc]
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            REDIS_ROUND_TRIPS.inc()
            try:
                if not self.is_connected:
                    await self.connect_check_health(check_health=False)
                if check_health:
                    # A PING is idempotent: its own retry re-makes a dead connection.
                    token = _AT_MOST_ONCE.set(False)
                    try:
                        await self.check_health()
                    finally:
                        _AT_MOST_ONCE.reset(token)
            except (ConnectionError, TimeoutError, OSError) as exc:
                raise NotSent(f"not sent: {exc}") from exc
            await super().send_packed_command(command, check_health=False)

    Connection.__name__ = f"Keystile{base.__name__}"
    _CONNECTIONS[base] = Connection
    return Connection


def create_redis(url: str, stores: StoreSettings) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url, max_connections=stores.redis_max_connections, timeout=stores.timeout_s,
        socket_timeout=stores.timeout_s, socket_connect_timeout=stores.timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=_Retry(NoBackoff(), RETRIES), retry_on_error=[ConnectionError, TimeoutError],
        # Maintenance notifications (a Redis Cloud feature) switch off the pool's check for
        # connections the server closed: they would fail the next command sent on them.
        maint_notifications_config=MaintNotificationsConfig(enabled=False))
    pool.connection_class = _connection_class(pool.connection_class)
    return Redis(connection_pool=pool)
