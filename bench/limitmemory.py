"""The limit-memory check: how much Redis one busy key's limit state takes, after 10,000,
100,000 and 1,000,000 spends (issue 13: at most 4 KB, whatever the traffic).

One key with windows of 1 s, 60 s and 3600 s, a daily quota and a lifetime usage limit, all
loose enough that every spend is admitted, is spent on through ``gateway.limits.Limiter``
directly — the gateway's own limiter, without HTTP in front (a million requests through
HTTP would take the bench too long): rounds of ``CONCURRENCY`` concurrent spends, which the
limiter pipelines into one round trip each. After each checkpoint it sums ``MEMORY USAGE``
(every element counted) over the key's limit-state keys, the ``ks:{<org>}…`` ones.

Only the limiter's public surface is used — ``Limiter(redis, pool)``, ``spend(record, cost,
enforce, now, deadline=...)`` and a record looked up the way the gateway does — so the check
measures whatever engine ``gateway/limits`` holds.

    .venv/bin/python bench/limitmemory.py            # 1,000,000 spends (or 10 minutes)
    .venv/bin/python bench/limitmemory.py --quick    # 100,000 spends
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from admin_api.migrate import migrate
from gateway import keyformat
from gateway.database import connect, create_pool
from gateway.keycache import KeyLookup, LocalCache
from gateway.keyrecord import KeyRecord
from gateway.limits.exact import Limiter
from gateway.redisclient import Store, create_redis
from gateway.settings import StoreSettings
from keystile.embedded import EmbeddedPostgres, EmbeddedRedis

SPENDS, QUICK_SPENDS = 1_000_000, 100_000
MINUTES, QUICK_MINUTES = 10.0, 3.0
CHECKPOINTS = (10_000, 100_000, 1_000_000)
CONCURRENCY = 1_000  # spends in flight at once: one pipelined round trip
GOAL_BYTES = 4096

# Every limit counter has the organisation (or a dialect's tag) as hash tag right after
# "ks:"; the key-cache records ("ks:h3:…") and the generation counter ("ks:gen") do not.
LIMIT_KEYS = "ks:{*"

WINDOWS = [{"limit": 10**12, "window_s": 1}, {"limit": 10**12, "window_s": 60},
           {"limit": 10**12, "window_s": 3600}]
QUOTA = {"limit": 10**15, "period": "day"}
USAGE_LIMIT = 10**15


async def _new_key(pg_url: str) -> tuple[str, bytes]:
    """A fresh organisation's one key with the checked limits; its org id and secret hash."""
    org = f"org_{keyformat.random_base62(22)}"
    raw = keyformat.generate("ks")
    key_id = keyformat.new_id("key")
    conn = await connect(pg_url)
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO orgs (id, name, provider_id, key_prefix) "
                           "VALUES ($1, 'limit memory', $1, 'ks')", org)
        await conn.execute(
            "INSERT INTO keys (id, org_id, prefix, key_prefix, scopes, rate_limits, quota, "
            "usage_limit) VALUES ($1, $2, $3, 'ks', '{svc:read}', $4, $5, $6)",
            key_id, org, keyformat.display_prefix(raw), WINDOWS, QUOTA, USAGE_LIMIT)
        await conn.execute("INSERT INTO key_secrets (hash, key_id) VALUES ($1, $2)",
                           keyformat.hash_key(raw), key_id)
    finally:
        await conn.close()
    return org, keyformat.hash_key(raw)


async def state_bytes(redis: Store, org: str) -> tuple[int, int]:
    """Bytes and count of the organisation's limit-state keys in Redis."""
    keys = [key async for key in redis.scan_iter(match=f"ks:{{{org}}}*", count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        sizes = await pipe.execute()
    return sum(int(n or 0) for n in sizes), len(keys)  # None: it expired meanwhile


async def _round(limiter: Limiter, record: KeyRecord, count: int) -> int:
    """``count`` concurrent spends of 1; how many were refused."""
    now = datetime.now(UTC)
    decisions = await asyncio.gather(*(limiter.spend(record, 1, True, now, deadline=None)
                                       for _ in range(count)))
    return sum(1 for d in decisions if not d.allowed)


async def run(pg_url: str, redis_url: str, spends: int, limit_s: float,
              checkpoints: tuple[int, ...] = CHECKPOINTS) -> dict[str, Any]:
    """``{"limit_memory": {spends: bytes}, "limit_memory_run": {...}}`` at each checkpoint
    below ``spends`` and at ``spends``; stops after ``limit_s`` seconds if not done by then
    (the last checkpoint is then what was reached)."""
    stops = [c for c in checkpoints if c < spends] + [spends]
    org, digest = await _new_key(pg_url)
    stores = StoreSettings()
    redis = create_redis(redis_url, stores)  # the gateway's client, as the limiter expects
    pool = await create_pool(pg_url, stores)
    memory: dict[str, int] = {}
    done = refused = 0
    spending_s = 0.0
    keys = 0
    limiter: Limiter | None = None
    try:
        record = await KeyLookup(LocalCache(0, 1.0, 0.0), redis, pool, 60).find(digest)
        assert record is not None, "the key just written must be found"
        limiter = Limiter(redis, pool)
        started = time.monotonic()
        # One spend alone first: it seeds the counters from PostgreSQL, once.
        began = time.perf_counter()
        refused = await _round(limiter, record, 1)
        spending_s, done = time.perf_counter() - began, 1
        for checkpoint in stops:
            while done < checkpoint and time.monotonic() - started < limit_s:
                count = min(CONCURRENCY, checkpoint - done)
                began = time.perf_counter()
                refused += await _round(limiter, record, count)
                spending_s += time.perf_counter() - began
                done += count
            memory[str(done)], keys = await state_bytes(redis, org)
            print(f"limit memory: {done:,} spends, {memory[str(done)]:,} bytes in {keys} "
                  f"keys, {done / max(spending_s, 1e-9):,.0f} spends/s", flush=True)
            if done < checkpoint:
                break  # out of time: what was reached is the last checkpoint
    finally:
        if limiter is not None:
            await limiter.aclose()
        await pool.close()
        await redis.aclose()
    return {"limit_memory": memory,
            "limit_memory_run": {"spends": done, "refused": refused, "keys": keys,
                                 "spends_per_s": round(done / max(spending_s, 1e-9), 1),
                                 "seconds": round(spending_s, 1),
                                 "stopped_early": done < spends,
                                 "concurrency": CONCURRENCY, "goal_bytes": GOAL_BYTES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SPENDS:,} spends")
    parser.add_argument("--spends", type=int)
    parser.add_argument("--minutes", type=float, help="stop after this long")
    args = parser.parse_args()
    spends = args.spends or (QUICK_SPENDS if args.quick else SPENDS)
    minutes = args.minutes or (QUICK_MINUTES if args.quick else MINUTES)
    work = Path(tempfile.mkdtemp(prefix="keystile-limitmemory-"))
    pg = EmbeddedPostgres(work / "pg", durable=False).start()
    try:
        store = EmbeddedRedis(work / "redis", durable=False).start()
        try:
            result = asyncio.run(run(pg.url, store.url, spends, minutes * 60))
        finally:
            store.stop()
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
