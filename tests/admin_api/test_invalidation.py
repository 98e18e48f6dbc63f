"""Every key change is announced on the Redis invalidation channel the gateway listens on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import redis.asyncio

from admin_api import changes
from gateway.database import connect
from gateway.invalidation import CHANNEL
from tests.admin_api.conftest import Admin
from tests.conftest import Stores


async def test_key_and_org_changes_publish_invalidations(admin: Admin, org: dict[str, Any],
                                                         stores: Stores) -> None:
    """Each message names the change, the primary's WAL position once it had committed (16
    hex digits, never going back) and when it was announced."""
    client = redis.asyncio.Redis.from_url(stores.redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=5)  # the subscribe confirmation
    positions: list[int] = []

    def check(message: dict[str, Any] | None, kind: str, ident: str) -> None:
        assert message is not None, (kind, ident)
        body = orjson.loads(message["data"])
        assert (body["type"], body["id"]) == (kind, ident)
        assert len(body["lsn"]) == 16 and abs(body["at"] - time.time()) < 10
        positions.append(int(body["lsn"], 16))
        assert positions == sorted(positions) and positions[0] > 0

    try:
        key = await admin.key(org["id"], owner_id="o")  # a new key is announced too
        check(await pubsub.get_message(ignore_subscribe_messages=True, timeout=5), "key",
              key["id"])
        path = f"/v1/keys/{key['id']}"
        for method, suffix, payload in (("PATCH", "", {"scopes": ["a:b"]}),
                                        ("POST", "/pause", None), ("POST", "/resume", None),
                                        ("POST", "/rotate", None), ("PUT", "/default", None),
                                        ("POST", "/usage", {"op": "set", "value": 1}),
                                        ("POST", "/revoke", None), ("DELETE", "", None)):
            await admin.call(method, path + suffix, json=payload)
            check(await pubsub.get_message(ignore_subscribe_messages=True, timeout=5), "key",
                  key["id"])
        await admin.call("PATCH", f"/v1/orgs/{org['id']}", json={"name": "n"}, expect=200)
        check(await pubsub.get_message(ignore_subscribe_messages=True, timeout=5), "org",
              org["id"])
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_concurrent_default_switches_leave_exactly_one_default(
        admin: Admin, org: dict[str, Any]) -> None:
    keys = [await admin.key(org["id"], owner_id="clinic") for _ in range(10)]
    results = await asyncio.gather(*(
        admin.client.put(f"/v1/keys/{k['id']}/default",
                         headers={"Authorization": "Bearer test-operator-token-0123456789"})
        for k in keys))
    assert [r.status for r in results] == [200] * 10
    assert await admin.db.fetchval(
        "SELECT count(*) FROM keys WHERE owner_id = 'clinic' AND is_default") == 1


async def test_a_request_does_not_take_rows_another_process_is_delivering_as_delivered(
        admin: Admin, org: dict[str, Any], stores: Stores, db: Any) -> None:
    """While the drainer holds a change's outbox row (and may be failing to deliver it), the
    request that made the change must not count it as delivered: it tries again."""
    key = await admin.key(org["id"])
    async with db.transaction():
        row_id = await db.fetchval(changes.ENQUEUE, "key", key["id"], [], [])
    holder = await connect(stores.database_url)
    client = redis.asyncio.Redis.from_url(stores.redis_url)
    try:
        async with holder.transaction():
            await holder.fetch("SELECT id FROM invalidation_outbox WHERE id = $1 FOR UPDATE",
                               row_id)
            assert await changes.drain(db, client, [row_id]) is False
        assert await changes.drain(db, client, [row_id]) is True  # released: delivered
        assert await db.fetchval("SELECT count(*) FROM invalidation_outbox") == 0
    finally:
        await holder.close()
        await client.aclose()
