"""key.expiring and key.expired, found by the scheduler every admin instance runs."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from admin_api.webhooks import expiry
from gateway import events
from gateway.database import connect
from gateway.settings import Settings
from tests.admin_api.conftest import Admin
from tests.conftest import Stores
from tests.gateway.conftest import eventually
from tests.webhooks.conftest import Receiver, admin_settings, nothing_left_to_announce, subscribe


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def test_expiry_is_announced_once_across_three_admin_instances(
        admin: Admin, org: dict[str, Any], receiver: Receiver, stores: Stores,
        another_admin: Callable[[Settings], Any]) -> None:
    await subscribe(admin, org["id"], receiver.url, events=["key.expiring", "key.expired"])
    async with another_admin(admin_settings(stores)), another_admin(admin_settings(stores)):
        soon = await admin.key(org["id"], name="soon", expires_at=_in(1.5))
        week = await admin.key(org["id"], name="week", expires_at=_in(6 * 86400))
        later = await admin.key(org["id"], name="later", expires_at=_in(30 * 86400))

        async def expired() -> bool:
            return bool(receiver.events("key.expired"))
        await eventually(expired)
    # Every occurrence due is marked: another round finds nothing to announce.
    await nothing_left_to_announce(admin.db)
    expiring = receiver.events("key.expiring")
    assert Counter((e["key"]["id"], e["data"]["warning_lead_s"]) for e in expiring) == {
        (soon["id"], 86400): 1, (week["id"], 7 * 86400): 1}
    assert [e["key"]["id"] for e in receiver.events("key.expired")] == [soon["id"]]
    assert later["id"] not in {e["key"]["id"] for e in receiver.events()}
    assert len(receiver.got) == 3
    rows = await admin.db.fetch("SELECT count(*) AS n FROM webhook_events")
    assert rows[0]["n"] == 3


async def test_lead_times_are_the_organisations_and_a_new_expiry_warns_again(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    await admin.db.execute("UPDATE orgs SET notifications = $2 WHERE id = $1", org["id"],
                           {"expiring_before_s": [3600]})
    await subscribe(admin, org["id"], receiver.url, events=["key.expiring"])
    key = await admin.key(org["id"], expires_at=_in(2 * 86400))
    inside = await admin.key(org["id"], expires_at=_in(1800))

    async def warned() -> bool:
        return len(receiver.got) >= 1
    await eventually(warned)
    assert [e["key"]["id"] for e in receiver.events()] == [inside["id"]]
    assert receiver.events()[0]["data"]["warning_lead_s"] == 3600
    # The first key's expiry is brought forward into the lead time: it is warned now.
    await admin.call("PATCH", f"/v1/keys/{key['id']}", json={"expires_at": _in(600)},
                     expect=200)

    async def both() -> bool:
        return len(receiver.got) >= 2
    await eventually(both)
    assert receiver.events()[1]["key"]["id"] == key["id"]
    assert 0 < receiver.events()[1]["data"]["expires_in_s"] <= 600


async def test_keys_expired_before_the_endpoint_existed_are_not_announced(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    old = await admin.key(org["id"], expires_at=_in(3600))
    await admin.db.execute("UPDATE keys SET expires_at = now() - interval '1 minute'")
    await subscribe(admin, org["id"], receiver.url)
    fresh = await admin.key(org["id"])  # key.created: the sender is running

    async def created() -> bool:
        return len(receiver.got) >= 1
    await eventually(created)
    await nothing_left_to_announce(admin.db)
    assert [e["key"]["id"] for e in receiver.events()] == [fresh["id"]]
    assert old["id"] not in {e["key"]["id"] for e in receiver.events()}


async def test_an_organisation_without_warnings_still_hears_of_expiry(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    await admin.db.execute("UPDATE orgs SET notifications = $2 WHERE id = $1", org["id"],
                           {"expiring_before_s": []})
    await subscribe(admin, org["id"], receiver.url, events=["key.expiring", "key.expired"])
    key = await admin.key(org["id"], expires_at=_in(3600))
    await admin.db.execute("UPDATE keys SET expires_at = now()")  # after the endpoint's birth

    async def expired() -> bool:
        return len(receiver.got) >= 1
    await eventually(expired)
    assert [(e["type"], e["key"]["id"]) for e in receiver.events()] == [
        ("key.expired", key["id"])]


async def test_announced_keys_never_fill_a_batch(
        admin: Admin, org: dict[str, Any], receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(expiry, "BATCH", 2)
    await subscribe(admin, org["id"], receiver.url, events=["key.expiring"])
    first = [await admin.key(org["id"], expires_at=_in(3600 + i)) for i in range(3)]

    async def three() -> bool:
        return len(receiver.got) >= 3
    await eventually(three)  # a full batch is followed by another round at once
    late = await admin.key(org["id"], expires_at=_in(7200))  # sorts after the marked ones

    async def four() -> bool:
        return len(receiver.got) >= 4
    await eventually(four)
    assert sorted(e["key"]["id"] for e in receiver.events()) == sorted(
        [k["id"] for k in first] + [late["id"]])


async def test_a_key_whose_expiry_is_moved_into_the_past_is_announced_at_once(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    await subscribe(admin, org["id"], receiver.url, events=["key.expired"])
    key = await admin.key(org["id"], expires_at=_in(30 * 86400))
    # A contract that ended a fortnight ago: longer ago than a scan looks back.
    ended = _in(-14 * 86400)
    out = await admin.call("PATCH", f"/v1/keys/{key['id']}", json={"expires_at": ended},
                           expect=200)
    assert out["status"] == "expired"
    [row] = await admin.db.fetch("SELECT payload FROM webhook_events")
    assert row["payload"]["type"] == "key.expired"
    assert row["payload"]["data"]["expires_at"] == ended
    await nothing_left_to_announce(admin.db)
    # Moved again while expired: no second announcement.
    await admin.call("PATCH", f"/v1/keys/{key['id']}", json={"expires_at": _in(-86400)},
                     expect=200)
    await nothing_left_to_announce(admin.db)

    async def arrived() -> bool:
        return len(receiver.got) == 1
    await eventually(arrived)
    assert await admin.db.fetchval("SELECT count(*) FROM webhook_events") == 1


async def scan_behind(change: Callable[[Any], Awaitable[None]], db: Any,
                      database_url: str) -> int | None:
    """A scan that reads the keys while ``change`` is under way, uncommitted, and waits on
    the key's queue lock it holds; the change then commits. What the scan returns."""
    conn = await connect(database_url)  # with the JSON codecs events need
    try:
        async with conn.transaction():
            await change(conn)
            scan = asyncio.create_task(expiry.scan(db))

            async def waiting_on_the_change() -> bool:
                return bool(await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' "
                    "AND pid <> pg_backend_pid()"))
            await eventually(waiting_on_the_change)
        return await scan
    finally:
        await conn.close()


@pytest.mark.webhooks(scan_interval_s=3600)  # the scans are this test's own
async def test_a_key_revoked_while_a_scan_runs_gets_no_expiry_event_after_its_revocation(
        admin: Admin, org: dict[str, Any], receiver: Receiver, stores: Stores) -> None:
    await subscribe(admin, org["id"], receiver.url, events=["key.expiring", "key.revoked"])
    key = await admin.key(org["id"], expires_at=_in(86400))

    async def revoke(conn: Any) -> None:  # as a revocation does, its event's lock first
        await conn.execute(events.QUEUE_LOCK, key["id"])
        await conn.execute("UPDATE keys SET status = 'revoked' WHERE id = $1", key["id"])
    assert await scan_behind(revoke, admin.db, stores.database_url) == 1
    assert await admin.db.fetchval("SELECT count(*) FROM webhook_events") == 0


@pytest.mark.webhooks(scan_interval_s=3600)  # the scans are this test's own
async def test_an_expiry_moved_into_the_past_during_a_scan_is_not_followed_by_a_warning(
        admin: Admin, org: dict[str, Any], receiver: Receiver, stores: Stores) -> None:
    await subscribe(admin, org["id"], receiver.url, events=["key.expiring", "key.expired"])
    key = await admin.key(org["id"], expires_at=_in(86400))

    async def expire(conn: Any) -> None:  # what PATCH expires_at=<past> does
        await conn.execute("UPDATE keys SET expires_at = now() - interval '1 hour' "
                           "WHERE id = $1", key["id"])
        await expiry.expired_by_change(conn, key["id"])
    assert await scan_behind(expire, admin.db, stores.database_url) == 1
    types = [r["type"] for r in await admin.db.fetch(
        "SELECT type FROM webhook_events ORDER BY created_at")]
    assert types == ["key.expired"]
