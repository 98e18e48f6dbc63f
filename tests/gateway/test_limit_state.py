"""The limits engine's state in Redis: bounded whatever the traffic, a few commands per
request, and the exact guarantee of fixed buckets — never over the limit in any window, and
never refused while the last window and one bucket before it held room."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from aiohttp.test_utils import TestClient

from gateway.keyformat import hash_key
from gateway.keyrecord import KeyRecord
from gateway.limits.decision import Decision
from gateway.limits.exact import Limiter
from gateway.limits.script import BUCKETS
from gateway.state import DEPS
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import eventually, limit_state_bytes

HUGE = 10**9  # limits that never refuse: the state is what is measured
WINDOWS_1S_60S_3600S = [{"limit": HUGE, "window_s": w} for w in (1, 60, 3600)]


async def _record(gateway: TestClient, raw: str) -> KeyRecord:
    record = await gateway.server.app[DEPS].keys.find(hash_key(raw))
    assert record is not None
    return record


async def _everything(admin: Admin, limit: int = HUGE) -> tuple[dict[str, Any], dict[str, Any]]:
    """An organisation and a key that meets every kind of limit: three windows of its own,
    its owner's and its organisation's windows, a daily quota and a lifetime limit."""
    org = await admin.org("everything", rate_limits=[{"limit": limit, "window_s": 60}])
    await admin.call("PUT", f"/v1/orgs/{org['id']}/owners/acct/limits",
                     json={"rate_limits": [{"limit": limit, "window_s": 60}]}, expect=200)
    key = await admin.key(org["id"], owner_id="acct", usage_limit=limit,
                          quota={"limit": limit, "period": "day"},
                          rate_limits=[{**w, "limit": limit} for w in WINDOWS_1S_60S_3600S])
    return org, key


async def test_a_keys_state_stays_under_4_kb_after_100000_requests(
        gateway: TestClient, admin: Admin, stores: Stores) -> None:
    org, key = await _everything(admin)
    record = await _record(gateway, key["key"])
    limiter: Limiter = gateway.server.app[DEPS].limiter
    spent = 0
    for _ in range(100):  # 1,000 at a time: they share one round trip
        decisions = await asyncio.gather(*(limiter.spend(record, 1, True, datetime.now(UTC))
                                           for _ in range(1000)))
        assert all(d.allowed for d in decisions)
        spent += len(decisions)
    assert spent == 100_000
    state = await limiter.peek(record, datetime.now(UTC))
    assert (state.usage_used, state.quota_used) == (100_000, 100_000)
    assert [w.window.limit - w.remaining for w in state.windows][1:] == [100_000] * 4
    # The key's, its owner's and its organisation's states together, whatever the traffic
    # (a sliding log held about 111 bytes per request and window: 33 MB here).
    assert await limit_state_bytes(stores.redis_url, org["id"]) <= 4096


async def test_a_request_runs_at_most_8_redis_commands(
        gateway: TestClient, admin: Admin, stores: Stores) -> None:
    _, key = await _everything(admin)
    headers = {"X-API-Key": key["key"]}
    assert (await gateway.get("/maybe/x", headers=headers)).status == 200  # cached, seeded
    control = redis.asyncio.Redis.from_url(stores.redis_url)

    async def commands() -> int:
        stats = await control.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
    try:
        before = await commands()
        for _ in range(20):
            resp = await gateway.get("/maybe/x", headers=headers)
            assert resp.status == 200 and resp.headers["RateLimit-Policy"]
        per_request = (await commands() - before) / 20
    finally:
        await control.aclose()
    # EVALSHA, TIME, and a GET and a SET of each of the key's, owner's and organisation's
    # states: the same whatever the number of windows.
    assert per_request <= 8, per_request


async def _redis_offset_ms(redis_url: str) -> float:
    """Redis's clock minus ours, in ms (to within a round trip)."""
    control = redis.asyncio.Redis.from_url(redis_url)
    try:
        sent = time.time()
        seconds, micros = await control.time()
        return float(seconds * 1000 + micros / 1000 - sent * 1000)
    finally:
        await control.aclose()


async def _burst_at(limiter: Limiter, record: KeyRecord, redis_ms: float, offset_ms: float,
                    n: int) -> list[Decision]:
    """``n`` spends sent together when Redis's clock reads about ``redis_ms``."""
    delay = (redis_ms - offset_ms) / 1000 - time.time()
    if delay > 0:
        await asyncio.sleep(delay)  # the adversary times its burst: deliberate passage of time
    return list(await asyncio.gather(*(limiter.spend(record, 1, True, datetime.now(UTC))
                                       for _ in range(n))))


async def test_an_adversary_bursting_at_bucket_edges_never_gets_more_than_the_limit(
        gateway: TestClient, admin: Admin, stores: Stores) -> None:
    limit, window_ms = 50, 1000
    width = math.ceil(window_ms / BUCKETS)  # 17 ms
    org = await admin.org("edges")
    key = await admin.key(org["id"], rate_limits=[{"limit": limit, "window_s": 1}])
    record = await _record(gateway, key["key"])
    limiter: Limiter = gateway.server.app[DEPS].limiter
    offset_ms = await _redis_offset_ms(stores.redis_url)
    decisions: list[Decision] = []
    start = (time.time() * 1000 + offset_ms) // width * width + 5 * width
    # Bursts just before and just after bucket edges, and a window after earlier bursts,
    # when a bucketed counter is most tempted to forget or to double count.
    for i in range(30):
        edge = start + i * 5 * width + (window_ms if i % 3 == 2 else 0)
        for at in (edge - 2, edge + 1):
            decisions += await _burst_at(limiter, record, at, offset_ms, 12)
    admitted = sorted(d.clock_ms for d in decisions if d.allowed and d.clock_ms is not None)
    refused = [d.clock_ms for d in decisions if not d.allowed and d.clock_ms is not None]
    assert len(admitted) + len(refused) == len(decisions) and admitted and refused

    def admitted_in(low: float, high: float) -> int:  # admitted in (low, high]
        return sum(1 for t in admitted if low < t <= high)
    # Never over: no window-long span holds more than the limit.
    assert max(admitted_in(t - window_ms, t) for t in admitted) <= limit
    # Never refused while the window and one bucket before it held room for the request.
    for t in refused:
        assert admitted_in(t - window_ms - width, t) + 1 > limit, t
    # And the adversary did get close to the limit (the counter is not simply strict).
    # (at most a bucket early: here a bucket can hold one burst of 12).
    assert max(admitted_in(t - window_ms, t) for t in admitted) >= limit - 12


async def test_the_oldest_overlapping_bucket_still_counts(
        gateway: TestClient, admin: Admin, stores: Stores) -> None:
    """A burst at the end of a bucket, one more request a few buckets later (the first bucket
    is then an older one, in the ring), then a burst one window after the first, when its
    bucket is the oldest the window overlaps: the first burst is still inside the window, so
    every request of the last one is refused."""
    limit, window_ms = 20, 3000
    width = math.ceil(window_ms / BUCKETS)  # 50 ms: room for the client's timing to wander
    org = await admin.org("oldest")
    limiter: Limiter = gateway.server.app[DEPS].limiter
    offset_ms = await _redis_offset_ms(stores.redis_url)
    judged = 0
    for _ in range(5):  # a busy machine may miss the moment: try again with a fresh key
        key = await admin.key(org["id"], rate_limits=[{"limit": limit, "window_s": 3}])
        record = await _record(gateway, key["key"])
        bucket = (time.time() * 1000 + offset_ms) // width + 3
        first = await _burst_at(limiter, record, bucket * width + width - 15, offset_ms,
                                limit - 1)
        later = await _burst_at(limiter, record, (bucket + 5) * width, offset_ms, 1)
        second = await _burst_at(limiter, record, bucket * width + window_ms + 5, offset_ms,
                                 limit)
        assert all(d.allowed for d in first + later)
        first_ms = [d.clock_ms for d in first if d.clock_ms is not None]
        # Those of the second burst whose window still holds the whole first one.
        inside = [d for d in second if d.clock_ms is not None
                  and d.clock_ms - window_ms < min(first_ms)
                  and (d.clock_ms - window_ms) // width == bucket]
        if {t // width for t in first_ms} == {bucket} and inside:
            assert not any(d.allowed for d in inside), [d.clock_ms for d in inside]
            judged += 1
            break
    assert judged, "the bursts never met the moment they were aimed at"


async def test_two_limits_of_one_length_are_given_back_once(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], rate_limits=[{"limit": 10, "window_s": 60},
                                                  {"limit": 100, "window_s": 60}])
    headers = {"X-API-Key": key["key"]}
    for _ in range(3):
        assert (await gateway.get("/maybe/x", headers=headers)).status == 200
    assert (await gateway.get("/refund/x?status=502", headers=headers)).status == 502
    usage = await admin.call("GET", f"/v1/keys/{key['id']}/usage", expect=200)
    assert [w["remaining"] for w in usage["rate_limits"]] == [7, 97]  # 4 spent, 1 given back


async def test_limits_changed_again_and_again_keep_the_state_bounded(
        gateway: TestClient, admin: Admin, org: dict[str, Any], stores: Stores) -> None:
    """Windows the limits no longer name are kept while they can still count (a worker may
    still judge with the older limits), but only the newest few."""
    key = await admin.key(org["id"], rate_limits=[{"limit": 100, "window_s": 60}])
    headers = {"X-API-Key": key["key"]}
    for window_s in range(61, 77):
        await admin.call("PATCH", f"/v1/keys/{key['id']}",
                         json={"rate_limits": [{"limit": 100, "window_s": window_s}]},
                         expect=200)

        async def judged_by_the_new_limits(policy: str = f"100;w={window_s}") -> bool:
            resp = await gateway.get("/maybe/x", headers=headers)
            return resp.headers.get("RateLimit-Policy") == policy
        await eventually(judged_by_the_new_limits)
    # 17 windows of about 280 bytes were named in turn; the key keeps its own and 10 more.
    assert await limit_state_bytes(stores.redis_url, org["id"]) <= 11 * 300 + 200


async def test_a_quota_changed_to_a_longer_period_is_counted_afresh(
        gateway: TestClient, admin: Admin) -> None:
    """A worker still holding the daily quota seeds today's count; the monthly (or weekly)
    quota that replaced it must not take that count for its own."""
    today = datetime.now(UTC).date()
    period, since = ("month", today.replace(day=1)) if today.day > 1 else (
        "week", today - timedelta(days=today.weekday()))
    if since == today:
        pytest.skip("the week and the month both start today")
    org = await admin.org("periods")
    key = await admin.key(org["id"], quota={"limit": 100, "period": "day"})
    daily = await _record(gateway, key["key"])
    await admin.db.execute("INSERT INTO key_usage_daily (key_id, day, count) "
                           "VALUES ($1, $2, 90), ($1, $3, 5)", key["id"], since, today)
    limiter: Limiter = gateway.server.app[DEPS].limiter
    now = datetime.now(UTC)
    assert (await limiter.spend(daily, 1, True, now)).quota_used == 6  # today's 5, and 1
    longer = dataclasses.replace(daily, quota={"limit": 100, "period": period})
    assert (await limiter.spend(longer, 1, True, now)).quota_used == 96  # 90 + 5, and 1
