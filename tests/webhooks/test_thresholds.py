"""quota.threshold and usage.threshold, detected where the usage is spent (the gateway's
write-behind flush, and the admin API's usage changes)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from gateway.thresholds import crossed
from tests.admin_api.conftest import Admin
from tests.gateway.conftest import eventually, one_by_one
from tests.webhooks.conftest import Receiver, subscribe


def test_crossed_names_each_threshold_reached_once() -> None:
    assert crossed(0, 7, 10, [80, 100]) == []
    assert crossed(7, 8, 10, [80, 100]) == [80]
    assert crossed(7, 10, 10, [100, 80]) == [80, 100]
    assert crossed(8, 10, 10, [80, 100]) == [100]
    assert crossed(10, 12, 10, [80, 100]) == []
    assert crossed(0, 1, 3, [50]) == []  # 50% of 3 is reached at 2 (rounded up)
    assert crossed(1, 2, 3, [50]) == [50]
    assert crossed(5, 3, 10, [40]) == []  # a refund goes down, never up
    assert crossed(0, 5, 0, [80]) == []  # spending never crosses a limit of 0 ...
    assert crossed(-1, 0, 0, [80, 100]) == [80, 100]  # ... a limit set to 0 is reached
    assert crossed(-1, 5, 10, [50, 80]) == [50]


async def test_thresholds_fire_once_as_the_gateway_spends(
        admin: Admin, org: dict[str, Any], gateway: TestClient, receiver: Receiver) -> None:
    await subscribe(admin, org["id"], receiver.url,
                    events=["quota.threshold", "usage.threshold"])
    quota_key = await admin.key(org["id"], scopes=["svc:read"], name="q",
                                quota={"limit": 10, "period": "day"})
    usage_key = await admin.key(org["id"], scopes=["svc:read"], name="u", usage_limit=5)
    assert await one_by_one(gateway, quota_key["key"], 12) == [200] * 10 + [429] * 2
    assert await one_by_one(gateway, usage_key["key"], 6) == [200] * 5 + [429]

    async def four() -> bool:
        return len(receiver.got) >= 4
    await eventually(four)
    quota = receiver.events("quota.threshold")
    assert [(e["key"]["id"], e["data"]["percent"]) for e in quota] == [
        (quota_key["id"], 80), (quota_key["id"], 100)]
    assert quota[0]["data"]["limit"] == 10 and quota[0]["data"]["period"] == "day"
    assert quota[0]["data"]["used"] >= 8 and quota[1]["data"]["used"] == 10
    usage = receiver.events("usage.threshold")
    assert [(e["key"]["id"], e["data"]["percent"]) for e in usage] == [
        (usage_key["id"], 80), (usage_key["id"], 100)]
    # Refused requests spend nothing and announce nothing more.
    assert await one_by_one(gateway, quota_key["key"], 3) == [429] * 3
    rows = await admin.db.fetch("SELECT type FROM webhook_events ORDER BY created_at")
    assert sorted(r["type"] for r in rows) == ["quota.threshold"] * 2 + ["usage.threshold"] * 2


async def test_the_organisations_percentages_apply_and_a_reset_announces_again(
        admin: Admin, org: dict[str, Any], gateway: TestClient, receiver: Receiver) -> None:
    await admin.db.execute("UPDATE orgs SET notifications = $2 WHERE id = $1", org["id"],
                           {"usage_percent": [50]})
    await subscribe(admin, org["id"], receiver.url, events=["usage.threshold"])
    key = await admin.key(org["id"], scopes=["svc:read"], usage_limit=4)
    assert await one_by_one(gateway, key["key"], 2) == [200, 200]

    async def one() -> bool:
        return len(receiver.got) >= 1
    await eventually(one)
    assert receiver.events()[0]["data"]["percent"] == 50
    # An administrator resets the count: reaching 50% again is a new occurrence.
    await admin.call("POST", f"/v1/keys/{key['id']}/usage", json={"op": "set", "value": 0},
                     expect=200)
    await admin.call("POST", f"/v1/keys/{key['id']}/usage",
                     json={"op": "increment", "value": 3}, expect=200)

    async def two() -> bool:
        return len(receiver.got) >= 2
    await eventually(two)
    assert [e["data"]["used"] for e in receiver.events()] == [2, 3]


def test_a_batch_across_midnight_is_judged_in_each_period() -> None:
    from datetime import date

    from gateway.thresholds import quota_crossings
    # Written just after midnight: 3 units of the 1st (reaching 10 of 10) and 1 of the 2nd.
    spent = {date(2026, 12, 1): 3, date(2026, 12, 2): 1}
    daily = {date(2026, 12, 1): 10, date(2026, 12, 2): 1}
    found = quota_crossings(10, "day", [80, 100], spent, daily)
    assert [(c.start.date(), c.percent, c.used) for c in found] == [
        (date(2026, 12, 1), 80, 10), (date(2026, 12, 1), 100, 10)]
    # The same days in a monthly quota are one period.
    found = quota_crossings(12, "month", [90], spent, daily)
    assert [(c.start.date(), c.percent, c.used) for c in found] == [
        (date(2026, 12, 1), 90, 11)]
    assert found[0].end.date() == date(2027, 1, 1)


async def test_limits_changed_below_the_usage_announce_their_thresholds_at_once(
        admin: Admin, org: dict[str, Any], gateway: TestClient, receiver: Receiver) -> None:
    await subscribe(admin, org["id"], receiver.url,
                    events=["quota.threshold", "usage.threshold"])
    key = await admin.key(org["id"], scopes=["svc:read"], usage_limit=1000,
                          quota={"limit": 1000, "period": "month"})
    assert await one_by_one(gateway, key["key"], 5) == [200] * 5

    async def written() -> bool:
        return await admin.db.fetchval("SELECT usage_count FROM keys WHERE id = $1",
                                       key["id"]) == 5
    await eventually(written)
    assert await admin.db.fetchval("SELECT count(*) FROM webhook_events") == 0
    # Lowered to the usage the key already has: it is refused from now on, and told so.
    path = f"/v1/keys/{key['id']}"
    await admin.call("PATCH", path, json={"usage_limit": 5,
                                          "quota": {"limit": 6, "period": "month"}}, expect=200)
    recorded = [(r["type"], r["data"]["percent"], r["data"]["limit"], r["data"]["used"])
                for r in await admin.db.fetch(
                    "SELECT type, payload->'data' AS data FROM webhook_events "
                    "ORDER BY type, (payload->'data'->>'percent')::int")]
    assert recorded == [("quota.threshold", 80, 6, 5), ("usage.threshold", 80, 5, 5),
                        ("usage.threshold", 100, 5, 5)]
    # The same limits again, or another change, announce nothing more.
    await admin.call("PATCH", path, json={"usage_limit": 5, "name": "renamed"}, expect=200)
    assert await admin.db.fetchval("SELECT count(*) FROM webhook_events") == 3

    async def arrived() -> bool:
        return len(receiver.got) == 3
    await eventually(arrived)
    assert await one_by_one(gateway, key["key"], 1) == [429]


async def test_a_limit_set_to_zero_is_announced_and_an_unchanged_one_is_not(
        admin: Admin, org: dict[str, Any], receiver: Receiver) -> None:
    # 9 of 10 used before the organisation had an endpoint: nothing was announced.
    key = await admin.key(org["id"], usage_limit=10)
    await admin.db.execute("UPDATE keys SET usage_count = 9 WHERE id = $1", key["id"])
    await subscribe(admin, org["id"], receiver.url, events=["usage.threshold"])
    path = f"/v1/keys/{key['id']}"
    # Another limit, or the same usage_limit again, is no change to the usage_limit.
    await admin.call("PATCH", path, json={"quota": {"limit": 1000, "period": "month"}},
                     expect=200)
    await admin.call("PATCH", path, json={"usage_limit": 10}, expect=200)
    assert await admin.db.fetchval("SELECT count(*) FROM webhook_events") == 0
    await admin.call("PATCH", path, json={"usage_limit": 0}, expect=200)
    recorded = [(r["data"]["percent"], r["data"]["limit"]) for r in await admin.db.fetch(
        "SELECT payload->'data' AS data FROM webhook_events ORDER BY created_at")]
    assert sorted(recorded) == [(80, 0), (100, 0)]
