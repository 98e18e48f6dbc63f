"""The key-table scale case: cache-miss lookups (worker cache, then Redis, then PostgreSQL,
then the record shared to Redis) with a small and a large key table. Both tables live in
their own database on the same server and are probed alternately, so drift of the machine
hits both alike."""

from __future__ import annotations

import statistics
import time

import asyncpg
from redis.asyncio import Redis

from bench.seed import ORG, QUOTA, WINDOWS, add_org, insert_keys
from gateway.database import connect, create_pool
from gateway.keycache import KeyLookup, LocalCache
from gateway.keyformat import hash_key
from gateway.settings import StoreSettings
from keystile.embedded import EmbeddedPostgres

SMALL = 1_000

# Filler keys cost no Python: ids and digests come from generate_series inside PostgreSQL.
FILL_KEYS = """
INSERT INTO keys (id, org_id, prefix, key_prefix, scopes, rate_limits, quota)
SELECT 'key_fill' || lpad(i::text, 18, '0'), $1, 'ks_fill', 'ks', '{svc:read}', $2, $3
FROM generate_series(1, $4) AS i"""
FILL_SECRETS = """
INSERT INTO key_secrets (hash, key_id)
SELECT sha256(('fill' || i)::bytea), 'key_fill' || lpad(i::text, 18, '0')
FROM generate_series(1, $1) AS i"""


async def _database(pg: EmbeddedPostgres, name: str, total: int, probed: int) -> list[str]:
    """A database ``name`` holding ``total`` keys; returns the raw form of ``probed`` of them."""
    admin = await asyncpg.connect(pg.url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    from admin_api.migrate import migrate

    conn = await connect(_url(pg, name))
    try:
        await migrate(conn)
        await add_org(conn)
        raws = await insert_keys(conn, probed, QUOTA)
        if total > probed:
            await conn.execute(FILL_KEYS, ORG, WINDOWS, QUOTA, total - probed)
            await conn.execute(FILL_SECRETS, total - probed)
        await conn.execute("ANALYZE")
        return raws
    finally:
        await conn.close()


def _url(pg: EmbeddedPostgres, database: str) -> str:
    return pg.url.rsplit("/", 1)[0] + "/" + database


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3)}


async def run(pg: EmbeddedPostgres, redis_url: str, large: int, samples: int
              ) -> dict[str, object]:
    samples = min(samples, SMALL)
    started = time.monotonic()
    small_keys = await _database(pg, "scale_small", SMALL, SMALL)
    large_keys = await _database(pg, "scale_large", large, SMALL)
    seeded_s = time.monotonic() - started
    stores = StoreSettings()
    redis = Redis.from_url(redis_url)
    pools = [await create_pool(_url(pg, db), stores) for db in ("scale_small", "scale_large")]
    # A cache of size 0 keeps nothing: every lookup goes to Redis, misses, reads PostgreSQL.
    lookups = [KeyLookup(LocalCache(0, 1.0, 0.0), redis, pool, 60) for pool in pools]
    timings: list[list[float]] = [[], []]
    try:
        for i in range(samples):
            for side, raws in enumerate((small_keys, large_keys)):
                digest = hash_key(raws[i])
                began = time.perf_counter()
                record = await lookups[side].find(digest)
                timings[side].append(time.perf_counter() - began)
                assert record is not None, "a probed key must be found"
    finally:
        for pool in pools:
            await pool.close()
        await redis.aclose()
    small, big = _summary(timings[0]), _summary(timings[1])
    return {"small_keys": SMALL, "large_keys": large, "samples": samples,
            "small": small, "large": big, "seed_s": round(seeded_s, 1),
            "p99_ratio": round(big["p99_ms"] / small["p99_ms"], 3)}
