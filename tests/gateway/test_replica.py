"""Key lookups read from a streaming replica (``database_read_url``), but never one that has
not yet replayed a change the gateway knows of: a revocation must not be undone by a replica
that lags behind it. Replay is paused on the replica (``pg_wal_replay_pause``) to make it lag
for as long as a test needs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio
from aiohttp.test_utils import TestClient

from gateway import keycache, keyformat, replica
from gateway.app import create_app
from gateway.database import connect, create_pool
from gateway.keycache import HASH_KEY, POSITION_FIELD, RECORD_FIELD
from gateway.redisclient import create_redis
from gateway.settings import Settings, StoreSettings
from gateway.state import LISTENING
from keystile.embedded import EmbeddedPostgres, free_port
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import eventually

pytestmark = pytest.mark.usefixtures("db")


@pytest.fixture
async def standby(pg_replica: EmbeddedPostgres, stores: Stores
                  ) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the replica, replaying; replay is resumed after the test."""
    conn = await connect(pg_replica.url)
    await conn.execute("SELECT pg_wal_replay_resume()")
    await caught_up(conn, stores)
    try:
        yield conn
    finally:
        await conn.execute("SELECT pg_wal_replay_resume()")
        await conn.close()


async def caught_up(standby: asyncpg.Connection, stores: Stores) -> None:
    """Until the replica has replayed everything the primary has written by now."""
    primary = await connect(stores.database_url)
    try:
        now = await primary.fetchval(replica.CURRENT)
    finally:
        await primary.close()

    async def replayed() -> bool:
        return bool(await standby.fetchval(replica.REPLAYED, now))
    await eventually(replayed, timeout=10)


async def paused(standby: asyncpg.Connection) -> None:
    await standby.execute("SELECT pg_wal_replay_pause()")

    async def stopped() -> bool:
        return bool(await standby.fetchval("SELECT pg_get_wal_replay_pause_state() = 'paused'"))
    await eventually(stopped)


@pytest.fixture
def gateway_settings(gateway_settings: Settings, pg_replica: EmbeddedPostgres) -> Settings:
    return gateway_settings.model_copy(update={"database_read_url": pg_replica.url})


async def lookups(gateway: TestClient) -> dict[str, float]:
    """``keystile_key_cache_total`` by result, as /metrics says."""
    text = await (await gateway.get("/metrics")).text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("keystile_key_cache_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = float(line.rsplit(" ", 1)[1])
    return out


async def get(gateway: TestClient, key: str) -> tuple[int, Any]:
    resp = await gateway.get("/svc/x", headers={"X-API-Key": key})
    return resp.status, await resp.json() if resp.content_type == "application/json" else None


async def test_a_miss_is_read_from_the_replica(
        gateway: TestClient, admin: Admin, org: dict[str, Any], standby: asyncpg.Connection,
        stores: Stores) -> None:
    key = await admin.key(org["id"], scopes=["svc:read"])
    await caught_up(standby, stores)
    before = await lookups(gateway)
    assert (await get(gateway, key["key"]))[0] == 200
    after = await lookups(gateway)
    assert after.get("replica", 0) == before.get("replica", 0) + 1
    assert after.get("postgres", 0) == before.get("postgres", 0)
    ready = await (await gateway.get("/readyz")).json()
    assert ready["checks"]["postgres_replica"] == "ok"


async def test_a_replica_behind_a_revocation_is_not_trusted(
        gateway: TestClient, admin: Admin, org: dict[str, Any], standby: asyncpg.Connection,
        stores: Stores) -> None:
    """The replica still says "active"; the gateway must read the primary and refuse, and
    must not share the replica's stale record through Redis either."""
    key = await admin.key(org["id"], scopes=["svc:read"])
    assert (await get(gateway, key["key"]))[0] == 200
    await caught_up(standby, stores)
    await paused(standby)
    await admin.call("POST", f"/v1/keys/{key['id']}/revoke", expect=200)
    assert await standby.fetchval("SELECT status FROM keys WHERE id = $1",
                                  key["id"]) == "active"  # the replica lags, as meant

    async def refused() -> bool:
        status, body = await get(gateway, key["key"])
        return status == 401 and body["error"]["code"] == "key_revoked"
    await eventually(refused)
    assert (await get(gateway, key["key"]))[0] == 401  # and stays refused
    client = redis.asyncio.Redis.from_url(stores.redis_url)
    try:
        shared = await client.hget(HASH_KEY.format(keyformat.hash_key(key["key"]).hex()),
                                   RECORD_FIELD)
    finally:
        await client.aclose()
    assert shared is None or b'"revoked"' in shared


async def test_a_key_created_while_the_replica_lags_works_at_once(
        gateway: TestClient, admin: Admin, org: dict[str, Any],
        standby: asyncpg.Connection) -> None:
    await paused(standby)
    key = await admin.key(org["id"], scopes=["svc:read"])

    async def served() -> bool:
        return (await get(gateway, key["key"]))[0] == 200
    await eventually(served, timeout=2)  # the creation's announcement, heard by the worker
    assert await standby.fetchval("SELECT count(*) FROM keys WHERE id = $1", key["id"]) == 0


@contextlib.asynccontextmanager
async def lookup_of(stores: Stores, pg_replica: EmbeddedPostgres, redis_url: str | None = None,
                    replica_closed: bool = False) -> AsyncIterator[keycache.KeyLookup]:
    """A worker's key lookup on its own pools and Redis client (``redis_url``: another
    Redis), closed afterwards."""
    pool = await create_pool(stores.database_url, StoreSettings())
    read = await create_pool(pg_replica.url, StoreSettings())
    client = create_redis(redis_url or stores.redis_url, StoreSettings(timeout_s=1.0))
    try:
        if replica_closed:
            await read.close()  # every call on it now fails
        yield keycache.KeyLookup(keycache.LocalCache(10, 60.0, 0.5), client, pool, 60, read)
    finally:
        await client.aclose()
        await read.close()
        await pool.close()


async def revoked_behind(admin: Admin, org: dict[str, Any], standby: asyncpg.Connection,
                         stores: Stores) -> tuple[dict[str, Any], bytes]:
    """A key the replica has, then revoked while the replica's replay is paused: the replica
    still says "active". The key and its digest."""
    key = await admin.key(org["id"], scopes=["svc:read"])
    await caught_up(standby, stores)
    await paused(standby)
    await admin.call("POST", f"/v1/keys/{key['id']}/revoke", expect=200)
    return key, keyformat.hash_key(key["key"])


async def test_a_lookup_that_has_not_heard_the_change_waits_for_the_replica(
        admin: Admin, org: dict[str, Any], standby: asyncpg.Connection, stores: Stores,
        pg_replica: EmbeddedPostgres) -> None:
    """A worker may look a secret up before the revocation's message reaches it: the WAL
    position kept beside the secret's generation in Redis holds it back from the replica."""
    _, digest = await revoked_behind(admin, org, standby, stores)
    async with lookup_of(stores, pg_replica) as lookup:
        position = await lookup.redis.hget(HASH_KEY.format(digest.hex()), POSITION_FIELD)
        assert replica.decode(position) > 0
        lookup.fenced = True  # as a worker subscribed before the change, which heard nothing
        assert lookup.position == 0
        record = await lookup.find(digest)
        assert record is not None and record.status == "revoked"


async def test_a_worker_that_heard_nothing_learns_the_primary_position_first(
        admin: Admin, org: dict[str, Any], standby: asyncpg.Connection, stores: Stores,
        pg_replica: EmbeddedPostgres) -> None:
    """A worker started (or re-subscribed) after a revocation whose position Redis no longer
    holds (the secret's hash expired, or Redis was emptied) reads the primary's position
    before it trusts the replica."""
    _, digest = await revoked_behind(admin, org, standby, stores)
    name = HASH_KEY.format(digest.hex())
    async with lookup_of(stores, pg_replica) as lookup:
        await lookup.redis.delete(name)
        record = await lookup.find(digest)
        assert record is not None and record.status == "revoked"
        shared = await lookup.redis.hget(name, RECORD_FIELD)
        assert shared is None or b'"revoked"' in shared
        assert lookup.fenced and lookup.position > 0
        lookup.unfence()  # the channel was re-subscribed: learnt again before the next use
        assert not lookup.fenced


async def test_without_redis_the_replica_is_not_trusted(
        admin: Admin, org: dict[str, Any], standby: asyncpg.Connection, stores: Stores,
        pg_replica: EmbeddedPostgres) -> None:
    """A change committed while Redis is down cannot be announced: the primary answers."""
    _, digest = await revoked_behind(admin, org, standby, stores)
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    async with lookup_of(stores, pg_replica, redis_url=nowhere) as lookup:
        lookup.fenced = True
        record = await lookup.find(digest)
        assert record is not None and record.status == "revoked"


async def test_a_replica_that_fails_is_replaced_by_the_primary(
        admin: Admin, org: dict[str, Any], stores: Stores, pg_replica: EmbeddedPostgres
        ) -> None:
    key = await admin.key(org["id"], scopes=["svc:read"])
    async with lookup_of(stores, pg_replica, replica_closed=True) as lookup:
        record = await lookup.find(keyformat.hash_key(key["key"]))
        assert record is not None and record.id == key["id"]


def test_wal_positions_as_kept_in_redis_and_messages() -> None:
    assert replica.encode(0x3000060) == "0000000003000060"
    assert replica.decode("0000000003000060") == 0x3000060
    assert replica.decode(b"0000000003000060") == 0x3000060
    for nothing in (None, "", b"", "zz", 7):
        assert replica.decode(nothing) == 0  # type: ignore[arg-type]
    assert replica.encode(0) == ""
    # As strings, later positions sort later (the announcing script relies on it).
    assert replica.encode(0x1_0000_0000) > replica.encode(0xFFFF_FFFF)


async def test_a_replica_that_is_down_neither_stops_the_gateway_nor_its_readiness(
        aiohttp_client: Any, gateway_settings: Settings, admin: Admin,
        org: dict[str, Any]) -> None:
    settings = gateway_settings.model_copy(update={
        "database_read_url": f"postgresql://keystile:x@127.0.0.1:{free_port()}/keystile"})
    app = create_app(settings)
    gateway = await aiohttp_client(app)
    await asyncio.wait_for(app[LISTENING].wait(), 10)
    key = await admin.key(org["id"], scopes=["svc:read"])
    assert (await get(gateway, key["key"]))[0] == 200  # the primary answered
    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["status"] == "ok"
    assert body["checks"]["postgres_replica"].startswith("unavailable")
