"""A Redis restart under the gateway: pooled connections to the old server are found dead
before a request uses them (no 503 after Redis is back), and a revoke made after the restart
takes effect at once."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import redis.asyncio
from aiohttp.test_utils import TestClient

from admin_api import changes
from gateway.state import LISTENING
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import eventually, statuses


async def test_no_503_after_a_redis_restart(gateway: TestClient, admin: Admin,
                                           org: dict[str, Any], stores: Stores) -> None:
    if stores.redis is None:
        pytest.skip("needs the embedded Redis (it is stopped and restarted)")
    limited = await admin.key(org["id"], rate_limits=[{"limit": 10_000, "window_s": 60}],
                              quota={"limit": 10_000, "period": "day"})
    other = await admin.key(org["id"])
    # Many concurrent requests fill the pool with connections that the restart leaves dead.
    assert set(await statuses(gateway, limited["key"], 40)) == {200}
    stores.redis.stop()
    stores.redis.start()
    await asyncio.wait_for(gateway.app[LISTENING].wait(), 15)
    for _ in range(5):
        assert set(await statuses(gateway, limited["key"], 40)) == {200}

    # A revoke after the restart reaches the gateway at once (its publish is not lost on a
    # dead admin connection either).
    assert set(await statuses(gateway, other["key"], 1)) == {200}
    await admin.call("POST", f"/v1/keys/{other['id']}/revoke", expect=200)
    revoked_at = time.monotonic()

    async def refused() -> bool:
        return await statuses(gateway, other["key"], 1) == [401]
    await eventually(refused, timeout=2.0)
    assert time.monotonic() - revoked_at < 0.5


class _OnRecord(logging.Handler):
    """Sets ``event`` when a warning is logged ("invalidation not announced")."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__(logging.WARNING)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()


@pytest.fixture
def no_drainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox's once-a-second pass is out of the picture: what is delivered promptly was
    delivered by the change's own request."""
    monkeypatch.setattr(changes, "RETRY_INTERVAL_S", 3600.0)


async def test_a_refused_announcement_is_retried_at_once(
        no_drainer: None, gateway: TestClient, admin: Admin, org: dict[str, Any],
        stores: Stores) -> None:
    key = await admin.key(org["id"])
    assert await statuses(gateway, key["key"], 1) == [200]  # cached by the worker
    control = redis.asyncio.Redis.from_url(stores.redis_url)
    # Redis refuses writes (out of memory) until the first announcement has failed.
    await control.config_set("maxmemory", "1")
    await control.config_set("maxmemory-policy", "noeviction")

    failed = asyncio.Event()
    heard = _OnRecord(failed)
    logging.getLogger("gateway.invalidation").addHandler(heard)

    async def lift_after_first_failure() -> None:
        await failed.wait()
        await control.config_set("maxmemory", "0")

    lifter = asyncio.create_task(lift_after_first_failure())
    try:
        await admin.call("POST", f"/v1/keys/{key['id']}/revoke", expect=200)
        revoked_at = time.monotonic()
        await asyncio.wait_for(lifter, 5)
    finally:
        logging.getLogger("gateway.invalidation").removeHandler(heard)
        lifter.cancel()
        await control.config_set("maxmemory", "0")
        await control.aclose()
    assert await admin.db.fetchval("SELECT count(*) FROM invalidation_outbox") == 0

    async def refused() -> bool:
        return await statuses(gateway, key["key"], 1) == [401]
    await eventually(refused, timeout=2.0)
    assert time.monotonic() - revoked_at < 0.5
