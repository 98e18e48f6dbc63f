"""The Redis client both planes use: a bounded pool that makes callers wait for a free
connection instead of opening one per concurrent command (which runs out of file
descriptors under load). Every round trip (one command, or one pipeline) is counted in
``keystile_redis_round_trips_total``.

Connections to a Redis that restarted are found dead before a command is written to them:
the pool checks a connection it hands out for a closed socket, and one idle for longer than
``HEALTH_CHECK_INTERVAL_S`` is PINGed first (and re-made if the PING fails). A call that still
fails on a connection error is retried once — unless it runs under ``at_most_once()`` (spends,
refunds, usage adjustments), which is retried only when nothing of it was written (the
failure came while connecting or health-checking), so a script never runs twice.

A ``redis+cluster://`` URL gives a ``RedisCluster`` with the same rules (see ``Cluster``):
redis-py's own cluster retry loop re-sends a command after a connection error or timeout,
so under ``at_most_once()`` it is given no retries, and this client retries only what was
never sent (or what the cluster refused unrun: CLUSTERDOWN). A connection error marks the
topology for re-reading, so a failed-over slot is found on its new master without a
restart."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MaxConnectionsError,
    SlotNotCoveredError,
    TimeoutError,
)
from redis.maint_notifications import MaintNotificationsConfig

from gateway import redisurl
from gateway.metrics import REDIS_ROUND_TRIPS
from gateway.settings import StoreSettings

Store = Redis | RedisCluster  # what create_redis gives: one node or a cluster

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


def create_redis(url: str, stores: StoreSettings) -> Store:
    if redisurl.is_cluster(url):
        return _create_cluster(redisurl.parse_cluster(url), stores)
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


# The cluster refused these without running them (or they never left): safe to send again,
# once the slot map is read again.
UNRUN = (NotSent, ClusterDownError, SlotNotCoveredError)
# After these the client's idea of the topology may be stale: read it again.
_TOPOLOGY_ERRORS = (ConnectionError, TimeoutError, ClusterDownError, SlotNotCoveredError)
_HOLDING: contextvars.ContextVar[bool] = contextvars.ContextVar("redis_holding",
                                                                default=False)


def _lost(error: AttributeError) -> ConnectionError:
    lost = ConnectionError(f"the connection was closed while in use ({error})")
    lost.__cause__ = error
    return lost


def _uncovered(error: SlotNotCoveredError) -> ClusterDownError:
    down = ClusterDownError(f"a slot has no master right now ({error})")
    down.__cause__ = error
    return down


@contextlib.contextmanager
def _as_redis_errors() -> Iterator[None]:
    """Two failover errors of redis-py's cluster client, said as what they are for us:
    - it re-reads the topology and closes the connections of a node that left it, including
      ones another command is using: that command fails with an AttributeError on the
      closed connection's stream. It is a lost connection (whether the command ran is
      unknown);
    - while a master is down and not yet replaced its slots are uncovered:
      SlotNotCoveredError, which is not a RedisError (callers that handle Redis failing
      would let it through as a 500). The cluster is down for that slot."""
    try:
        yield
    except AttributeError as exc:
        raise _lost(exc) from exc
    except SlotNotCoveredError as exc:
        raise _uncovered(exc) from exc


class _ClusterRetry(Retry):
    """redis-py's cluster client re-sends a command after any connection error or timeout
    as often as ``get_retries()`` says: none at all under ``at_most_once()``."""

    def get_retries(self) -> int:
        return 0 if _AT_MOST_ONCE.get() else super().get_retries()


class Cluster(RedisCluster):
    """``RedisCluster`` with Keystile's rules: at most ``max_connections`` commands or
    pipelines in flight (callers wait for a turn, as with the single-node pool, instead of
    redis-py's per-node pool failing with MaxConnectionsError), what was never run retried
    once, and the topology re-read after a connection failure."""

    def __init__(self, *args: Any, turns: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(turns)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if _HOLDING.get():  # a pipeline's redirected command, inside its turn
            yield
            return
        async with self._turns:
            token = _HOLDING.set(True)
            try:
                yield
            finally:
                _HOLDING.reset(token)

    def refresh_topology(self) -> None:
        """The next command reads the slot map again (a master may have failed over)."""
        self._initialize = True

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            for attempt in range(RETRIES + 1):
                try:
                    with _as_redis_errors():
                        return await super().execute_command(*args, **kwargs)
                except UNRUN:
                    self.refresh_topology()
                    if attempt == RETRIES:
                        raise
                except _TOPOLOGY_ERRORS:
                    self.refresh_topology()
                    raise
        raise AssertionError("unreachable")

    def pipeline(self, transaction: Any | None = None,
                 shard_hint: Any | None = None) -> ClusterPipeline:
        if transaction or shard_hint:
            raise ValueError("a cluster pipeline cannot be a transaction: its keys live in "
                             "many slots")
        return _ClusterPipeline(self)  # type: ignore[abstract]  # as redis-py does


class _ClusterPipeline(ClusterPipeline):
    """Commands grouped per node, one round trip per node. Under ``at_most_once()`` it is
    never re-sent (redis-py would send again everything that has no answer yet); its
    errors come back per command and mark the topology for re-reading."""

    cluster_client: Cluster

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> ClusterPipeline:
        """redis-py refuses scripts in cluster pipelines; routed by their keys (which must
        share one slot, or the command fails alone), they are sound."""
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def publish(  # type: ignore[override]  # queued: the pipeline, as every command
            self, channel: Any, message: Any, **kwargs: Any) -> ClusterPipeline:
        """redis-py refuses PUBLISH in cluster pipelines (it has no key to route by); any
        node will do, since a cluster passes every message on to all nodes."""
        return self.execute_command("PUBLISH", channel, message,
                                    target_nodes=RedisCluster.DEFAULT_NODE)

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        async with self.cluster_client.turn():
            try:
                with _as_redis_errors():
                    results = list(await super().execute(raise_on_error, allow_redirections))
            except _TOPOLOGY_ERRORS:
                self.cluster_client.refresh_topology()
                raise
        results = [_lost(r) if isinstance(r, AttributeError)
                   else _uncovered(r) if isinstance(r, SlotNotCoveredError) else r
                   for r in results]
        if any(isinstance(r, _TOPOLOGY_ERRORS) and not isinstance(r, MaxConnectionsError)
               for r in results):
            self.cluster_client.refresh_topology()
        return results


def _create_cluster(url: redisurl.ClusterURL, stores: StoreSettings) -> Cluster:
    cluster = Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in url.nodes],
        username=url.username, password=url.password, ssl=url.tls,
        turns=stores.redis_max_connections,
        # Per node: every turn may be on one node, plus the invalidation channel's connection.
        max_connections=stores.redis_max_connections + 1,
        socket_timeout=stores.timeout_s, socket_connect_timeout=stores.timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=_ClusterRetry(NoBackoff(), RETRIES),
        maint_notifications_config=MaintNotificationsConfig(enabled=False))
    # redis-py fixes the connection class; ours counts round trips and tells what was sent.
    counted = _connection_class(SSLConnection if url.tls else Connection)
    cluster.connection_kwargs["connection_class"] = counted
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = counted  # type: ignore[assignment]
    return cluster


def refresh_topology(redis: Store) -> None:
    """A cluster client reads its slot map again before its next command (no-op for one
    node): for a caller that lost a connection outside the client's own commands."""
    if isinstance(redis, Cluster):
        redis.refresh_topology()


async def topology_read(redis: Store) -> None:
    """A cluster client reads its slot map now if it has none or was told to re-read it
    (no-op for one node): for pub/sub, which picks its node without reading it."""
    if isinstance(redis, Cluster):
        await redis.initialize()
