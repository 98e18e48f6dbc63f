"""The limit-memory check (bench/limitmemory.py): it spends through the gateway's limiter,
reports the key's limit state at each checkpoint, counts only that key's limit counters, and
stops when its time is up. The sizes themselves are not judged here — `make bench` prints
them (the bound of issue 13 has its own test in the limits tests)."""

from __future__ import annotations

import asyncpg
import redis
import redis.asyncio

from bench import limitmemory
from bench.load import forget_limits, limit_state
from tests.conftest import Stores


async def test_it_reports_the_keys_limit_state_at_each_checkpoint(
        db: asyncpg.Connection, stores: Stores) -> None:
    result = await limitmemory.run(stores.database_url, stores.redis_url, 2500, 60,
                                   checkpoints=(1000, 2000))
    memory, run = result["limit_memory"], result["limit_memory_run"]
    assert list(memory) == ["1000", "2000", "2500"]
    assert all(size > 0 for size in memory.values()), memory
    assert run["spends"] == 2500 and run["refused"] == 0 and not run["stopped_early"]
    assert run["spends_per_s"] > 0 and run["keys"] > 0


async def test_it_stops_when_its_time_is_up(db: asyncpg.Connection, stores: Stores) -> None:
    result = await limitmemory.run(stores.database_url, stores.redis_url, 10**9, 0)
    run = result["limit_memory_run"]
    assert run["stopped_early"] and run["spends"] == 1  # the seeding spend, then time was up
    assert list(result["limit_memory"]) == ["1"]


async def test_only_limit_counters_count_as_limit_state(
        db: asyncpg.Connection, stores: Stores) -> None:
    client = redis.asyncio.Redis.from_url(stores.redis_url)
    try:
        await client.set("ks:{org_a}:u:key_a", "1")
        await client.zadd("ks:{org_a}:r:k:key_a:60", {"m": 1})
        await client.set("ks:{org_b}:u:key_b", "2")
        await client.set("ks:h3:" + "ab" * 32, "a key record")
        await client.set("ks:gen", "7")
        one_org = await limitmemory.state_bytes(client, "org_a")
        expected = sum([await client.memory_usage(k, samples=0) or 0
                        for k in ("ks:{org_a}:u:key_a", "ks:{org_a}:r:k:key_a:60")])
        assert one_org == (expected, 2)
        other = await client.memory_usage("ks:{org_b}:u:key_b", samples=0) or 0
        with redis.Redis.from_url(stores.redis_url) as sync:
            assert limit_state(sync) == (expected + other, 3)
            forget_limits(sync)  # drops the counters, keeps the key records
            assert limit_state(sync) == (0, 0)
        assert await client.exists("ks:h3:" + "ab" * 32, "ks:gen") == 2
    finally:
        await client.aclose()
