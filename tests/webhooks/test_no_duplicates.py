"""Two admin instances and a gateway with two workers: every threshold and expiry event is
recorded and delivered once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from gateway.settings import Settings
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import Upstream, eventually
from tests.gateway.test_workers import _start_gateway
from tests.keystile.conftest import Cli, cli  # noqa: F401
from tests.webhooks.conftest import Receiver, admin_settings, nothing_left_to_announce, subscribe


async def _spend(port: int, key: str, n: int) -> Counter[int]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async def one() -> int:
            async with s.get(f"http://127.0.0.1:{port}/svc/x",
                             headers={"X-API-Key": key}) as resp:
                await resp.read()
                return resp.status
        return Counter(await asyncio.gather(*(one() for _ in range(n))))


async def test_two_admins_and_two_workers_announce_each_occurrence_once(
        cli: Cli, stores: Stores, upstream: Upstream, admin: Admin,  # noqa: F811
        org: dict[str, Any], receiver: Receiver, tmp_path: Path,
        another_admin: Callable[[Settings], Any]) -> None:
    await subscribe(admin, org["id"], receiver.url, events=[
        "quota.threshold", "usage.threshold", "key.expiring", "key.expired"])
    proc, port, _ = await _start_gateway(cli, stores, upstream, tmp_path,
                                         gateway="usage_flush_interval_s = 0.05")
    async with another_admin(admin_settings(stores)):
        lifetime = await admin.key(org["id"], usage_limit=40)
        quota = await admin.key(org["id"], quota={"limit": 40, "period": "day"})
        expiring = await admin.key(
            org["id"], expires_at=(datetime.now(UTC) + timedelta(seconds=1.5)).isoformat())
        spent = await asyncio.gather(_spend(port, lifetime["key"], 100),
                                     _spend(port, quota["key"], 100))
        assert [c[200] for c in spent] == [40, 40]

        async def settled() -> bool:  # every count written, the key expired and announced
            usage = await admin.db.fetchval(
                "SELECT usage_count FROM keys WHERE id = $1", lifetime["id"])
            daily = await admin.db.fetchval(
                "SELECT sum(count) FROM key_usage_daily WHERE key_id = $1", quota["id"])
            return usage == 40 and daily == 40 and len(receiver.got) >= 6
        await eventually(settled, timeout=15)
    await nothing_left_to_announce(admin.db)
    got = Counter((e["key"]["id"], e["type"], e["data"].get("percent"))
                  for e in receiver.events())
    assert got == {
        (lifetime["id"], "usage.threshold", 80): 1, (lifetime["id"], "usage.threshold", 100): 1,
        (quota["id"], "quota.threshold", 80): 1, (quota["id"], "quota.threshold", 100): 1,
        (expiring["id"], "key.expiring", None): 1, (expiring["id"], "key.expired", None): 1}
    assert await admin.db.fetchval("SELECT count(*) FROM webhook_events") == 6
    assert proc.poll() is None
