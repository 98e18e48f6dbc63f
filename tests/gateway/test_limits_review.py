"""Limits cases found in review, each pinned by a test."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.database import create_pool
from gateway.settings import StoreSettings
from gateway.usage import UsageRecorder
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import limit_state_bytes


async def test_two_limiters_in_one_process_never_share_log_entries(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    # The admin API (verify) and the gateway share this process, as in `keystile dev`.
    key = await admin.key(org["id"], rate_limits=[{"limit": 5, "window_s": 60}])
    admitted = 0
    for _ in range(5):
        resp = await gateway.get("/maybe/x", headers={"X-API-Key": key["key"]})
        admitted += resp.status == 200
        result = await admin.call("POST", "/v1/verify", json={"key": key["key"]}, expect=200)
        admitted += result["valid"]
    assert admitted == 5


async def test_a_limit_removed_and_restored_counts_from_the_truth(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], usage_limit=3, quota={"limit": 5, "period": "day"})
    headers = {"X-API-Key": key["key"]}

    async def statuses(n: int) -> Counter[int]:
        return Counter([(await gateway.get("/maybe/x", headers=headers)).status
                        for _ in range(n)])

    assert await statuses(4) == Counter({200: 3, 429: 1})
    await admin.call("PATCH", f"/v1/keys/{key['id']}", json={"usage_limit": None,
                                                             "quota": None}, expect=200)
    assert await statuses(2) == Counter({200: 2})  # 5 used now
    await admin.call("PATCH", f"/v1/keys/{key['id']}",
                     json={"usage_limit": 7, "quota": {"limit": 6, "period": "day"}},
                     expect=200)
    # 5 were used: the quota of 6 leaves exactly 1 (not 6 from a counter left behind).
    assert await statuses(3) == Counter({200: 1, 429: 2})


async def test_a_huge_cost_takes_no_more_room_than_a_small_one(
        admin: Admin, stores: Stores) -> None:
    sizes = []
    for cost in (1, 1_000_000):
        org = await admin.org(f"cost-{cost}")
        key = await admin.key(org["id"], rate_limits=[{"limit": 10**12, "window_s": 60}])
        result = await admin.call("POST", "/v1/verify", json={"key": key["key"], "cost": cost},
                                  expect=200)
        assert result["valid"] is True and result["rate_limit_remaining"] == 10**12 - cost
        sizes.append(await limit_state_bytes(stores.redis_url, org["id"]))
    # One window's buckets, whatever they count (MEMORY USAGE also counts what the allocator
    # rounds up, which varies by a few bytes).
    assert 0 < sizes[0] <= 512 and 0 < sizes[1] <= 512 and abs(sizes[0] - sizes[1]) <= 32


async def test_flush_survives_a_refund_below_a_lowered_count(admin: Admin, org: dict[str, Any],
                                                             stores: Stores) -> None:
    a = await admin.key(org["id"])
    b = await admin.key(org["id"])
    recorder = UsageRecorder()
    now = datetime.now(UTC)
    recorder.record(a["id"], 5, now)
    recorder.unrecord(b["id"], 1, now)  # b's count is 0: must not poison the batch
    pool = await create_pool(stores.database_url, StoreSettings())
    try:
        await recorder.flush(pool)
    finally:
        await pool.close()
    assert await admin.db.fetchval("SELECT usage_count FROM keys WHERE id = $1", a["id"]) == 5
    assert await admin.db.fetchval("SELECT usage_count FROM keys WHERE id = $1", b["id"]) == 0
    assert recorder.pending(a["id"], now.date()) == (0, 0)


async def test_a_flush_cancelled_at_shutdown_keeps_its_units(admin: Admin, org: dict[str, Any],
                                                            stores: Stores) -> None:
    key = await admin.key(org["id"])
    recorder = UsageRecorder()
    now = datetime.now(UTC)
    recorder.record(key["id"], 7, now)
    pool = await create_pool(stores.database_url, StoreSettings())
    blocker = admin.db
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("SELECT 1 FROM keys WHERE id = $1 FOR UPDATE", key["id"])
    try:
        flush = asyncio.create_task(recorder.flush(pool))
        deadline = asyncio.get_running_loop().time() + 5
        while await pool.fetchval("SELECT count(*) FROM pg_stat_activity "
                                  "WHERE wait_event_type = 'Lock'") == 0:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        flush.cancel()
        await asyncio.gather(flush, return_exceptions=True)
    finally:
        await tx.rollback()
    assert recorder.pending(key["id"], now.date()) == (7, 7)
    await recorder.flush(pool)
    await pool.close()
    assert await admin.db.fetchval("SELECT usage_count FROM keys WHERE id = $1", key["id"]) == 7
