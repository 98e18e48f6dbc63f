"""Where a key lookup is answered: malformed keys touch no store, a known key is served from
the worker cache after the first request, and an unknown one is remembered briefly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio
from aiohttp.test_utils import TestClient

from gateway import keycache, keyformat
from gateway.database import create_pool
from gateway.errors import GatewayError
from gateway.keycache import HASH_KEY, RECORD_FIELD
from gateway.redisclient import create_redis
from gateway.settings import StoreSettings
from tests.admin_api.conftest import Admin
from tests.conftest import Stores


async def _redis_calls(stores: Stores) -> int:
    client = redis.asyncio.Redis.from_url(stores.redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_hmget", "cmdstat_evalsha",
                                                               "cmdstat_eval"))


async def test_malformed_keys_touch_no_store(gateway: TestClient, admin: Admin,
                                             stores: Stores) -> None:
    good = keyformat.generate("ks_live")
    bad_checksum = good[:-1] + ("A" if good[-1] != "A" else "B")
    # A lookup always asks Redis before PostgreSQL, so no Redis read means no lookup at all.
    redis_before = await _redis_calls(stores)
    for raw in ("nonsense", bad_checksum, "ks_live_short", "x" * 300):
        resp = await gateway.get("/svc/x", headers={"X-API-Key": raw})
        assert resp.status == 401
    assert await _redis_calls(stores) == redis_before
    # ...while a well-formed unknown key does look (so this check can fail).
    assert (await gateway.get("/svc/x", headers={"X-API-Key": good})).status == 401
    assert await _redis_calls(stores) > redis_before


async def test_known_key_is_cached_per_worker_and_unknown_key_negatively(
        gateway: TestClient, admin: Admin, org: dict[str, Any], stores: Stores) -> None:
    key = await admin.key(org["id"], scopes=["svc:read"])
    assert (await gateway.get("/svc/x", headers={"X-API-Key": key["key"]})).status == 200
    redis_before = await _redis_calls(stores)
    for _ in range(20):
        assert (await gateway.get("/svc/x", headers={"X-API-Key": key["key"]})).status == 200
    assert await _redis_calls(stores) == redis_before  # all from the worker cache

    unknown = keyformat.generate("ks_live")
    assert (await gateway.get("/svc/x", headers={"X-API-Key": unknown})).status == 401
    redis_after_first = await _redis_calls(stores)
    assert redis_after_first > redis_before
    for _ in range(5):
        assert (await gateway.get("/svc/x", headers={"X-API-Key": unknown})).status == 401
    assert await _redis_calls(stores) == redis_after_first  # the negative cache answered


async def test_a_record_is_shared_through_redis(gateway: TestClient, admin: Admin,
                                                org: dict[str, Any], stores: Stores) -> None:
    key = await admin.key(org["id"], scopes=["svc:read"])
    assert (await gateway.get("/svc/x", headers={"X-API-Key": key["key"]})).status == 200
    client = redis.asyncio.Redis.from_url(stores.redis_url)
    try:
        name = HASH_KEY.format(keyformat.hash_key(key["key"]).hex())
        cached = await client.hget(name, RECORD_FIELD)
        assert cached is not None and key["id"].encode() in cached
        assert key["key"].encode() not in cached  # the record, never the secret
        await admin.call("POST", f"/v1/keys/{key['id']}/revoke", expect=200)
        # The admin change removed the shared record at once.
        assert await client.hget(name, RECORD_FIELD) is None
    finally:
        await client.aclose()


def test_cached_keys_are_trusted_long_only_while_invalidations_are_heard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the invalidation channel is up a worker keeps a key for ``cache_ttl_s``; while
    it is down (a change may go unheard) only for ``cache_ttl_unsubscribed_s``."""
    clock = [1000.0]
    monkeypatch.setattr(keycache.time, "monotonic", lambda: clock[0])
    heard = asyncio.Event()
    heard.set()
    cache = keycache.LocalCache(10, ttl_s=60.0, negative_ttl_s=0.5, unsubscribed_ttl_s=1.0,
                                subscribed=heard)
    record: Any = object()
    cache.put(b"d", record, None, cache.generation)
    clock[0] += 30  # half a minute: still trusted while the channel is heard
    entry = cache.get(b"d")
    assert isinstance(entry, keycache._Entry) and entry.record is record
    heard.clear()  # the channel is lost: a 30 s old entry is now too old
    assert cache.get(b"d") is None
    cache.put(b"d", record, None, cache.generation)
    clock[0] += 0.5
    assert cache.get(b"d") is not None  # a fresh one is kept for the short TTL...
    clock[0] += 0.6
    assert cache.get(b"d") is None  # ...and no longer
    heard.set()
    cache.put(b"d", record, None, cache.generation)
    clock[0] += 61
    assert cache.get(b"d") is None  # the long TTL is the backstop even when all is well


def test_a_lookup_in_flight_during_an_invalidation_caches_nothing() -> None:
    """A record read before an admin change (a revoke) arrived must not be cached after it:
    the worker would serve the revoked key until the TTL ends."""
    cache = keycache.LocalCache(10, ttl_s=60.0, negative_ttl_s=0.5)
    record: Any = object()
    started_at = cache.generation  # the lookup begins...
    cache.drop(key_id="key_x")  # ...an invalidation is applied meanwhile...
    cache.put(b"d", record, None, started_at)  # ...and the lookup's answer arrives
    assert cache.get(b"d") is None
    cache.put(b"d", None, None, started_at)  # nor is an answer "unknown" remembered
    assert cache.get(b"d") is None
    cache.put(b"d", record, None, cache.generation)  # a lookup started after it is cached
    assert cache.get(b"d") is not None


def test_an_unknown_key_is_remembered_only_for_negative_ttl(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A hash that was unknown may become a key (created while the channel was down): after
    ``negative_ttl_s`` the worker asks the stores again."""
    clock = [1000.0]
    monkeypatch.setattr(keycache.time, "monotonic", lambda: clock[0])
    cache = keycache.LocalCache(10, ttl_s=60.0, negative_ttl_s=0.5)
    cache.put(b"d", None, None, cache.generation)
    clock[0] += 0.4
    assert cache.get(b"d") is False  # known to be unknown
    clock[0] += 0.2
    assert cache.get(b"d") is None  # forgotten: the next request looks it up


async def test_a_lookup_racing_an_admin_change_cannot_share_the_old_record(
        admin: Admin, org: dict[str, Any], stores: Stores) -> None:
    """A lookup reads Redis (nothing shared), then PostgreSQL; an admin change (a revoke)
    lands in between; the lookup's write-back must not put the pre-revoke record into Redis,
    where every worker would find it."""
    key = await admin.key(org["id"], scopes=["svc:read"])
    digest = keyformat.hash_key(key["key"])
    pool = await create_pool(stores.database_url, StoreSettings())
    redis = create_redis(stores.redis_url, StoreSettings())
    try:
        lookup = keycache.KeyLookup(keycache.LocalCache(10, 60.0, 0.5), redis, pool, 60)
        record, _, generation, _ = await lookup._from_redis(digest)
        assert record is None and generation is not None
        before, expires = await lookup._from_postgres(digest, 0)
        assert before is not None and before.status == "active"
        await admin.call("POST", f"/v1/keys/{key['id']}/revoke", expect=200)
        await lookup._share(digest, before, expires, generation, datetime.now(UTC))
        name = HASH_KEY.format(digest.hex())
        assert await redis.hget(name, RECORD_FIELD) is None
        # A lookup begun after the change shares what PostgreSQL says now.
        after = await lookup.find(digest)
        assert after is not None and after.status == "revoked"
        shared = await redis.hget(name, RECORD_FIELD)
        assert shared is not None and b'"revoked"' in shared
    finally:
        await redis.aclose()
        await pool.close()


async def test_a_lookup_on_a_connection_the_server_just_ended_is_a_503_not_a_500(
        admin: Admin, org: dict[str, Any], stores: Stores) -> None:
    """The primary stopping or restarting ends the pool's connections; a lookup meeting one
    is ``store_unavailable`` (503), whichever way asyncpg notices, and the next one works.
    (The goodbye and the closed socket race: a round here met asyncpg's InternalClientError,
    a 500 before, about once in twenty.)"""
    application = "keystile-gateway-goodbye-test"
    key = await admin.key(org["id"], scopes=["svc:read"])
    digest = keyformat.hash_key(key["key"])
    pool = await create_pool(f"{stores.database_url}?application_name={application}",
                             StoreSettings(pool_min_size=1, pool_max_size=1))
    redis = create_redis(stores.redis_url, StoreSettings())
    refused = 0
    try:
        for _ in range(60):
            lookup = keycache.KeyLookup(keycache.LocalCache(0, 60.0, 0.0), redis, pool, 60)
            await admin.db.fetchval("SELECT count(pg_terminate_backend(pid)) FROM "
                                    "pg_stat_activity WHERE application_name = $1", application)
            try:
                record = await lookup._from_postgres(digest, 0)
            except GatewayError as exc:
                assert exc.code == "store_unavailable"
                refused += 1
            else:
                assert record[0] is not None and record[0].id == key["id"]
        assert refused > 0
        record = await lookup._from_postgres(digest, 0)  # the pool has made a new connection
        assert record[0] is not None
    finally:
        await redis.aclose()
        await pool.close()
