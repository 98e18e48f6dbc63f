from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.admin_api.conftest import Admin, as_key


async def test_usage_shows_counts_quota_windows_and_history(admin: Admin, org: dict[str, Any]
                                                            ) -> None:
    key = await admin.key(org["id"], usage_limit=100, quota={"limit": 50, "period": "day"},
                          rate_limits=[{"limit": 10, "window_s": 1}])
    today = datetime.now(UTC).date()
    await admin.db.execute(
        "INSERT INTO key_usage_daily (key_id, day, count) VALUES ($1, $2, 7), ($1, $3, 4)",
        key["id"], today, today - timedelta(days=1))
    await admin.db.execute("UPDATE keys SET usage_count = 11 WHERE id = $1", key["id"])

    usage = await admin.call("GET", f"/v1/keys/{key['id']}/usage", expect=200)
    assert usage["usage_count"] == 11 and usage["usage_remaining"] == 89
    assert usage["quota"]["used"] == 7 and usage["quota"]["limit"] == 50
    assert usage["quota"]["resets_at"].startswith((today + timedelta(days=1)).isoformat())
    window = usage["rate_limits"][0]
    assert (window["limit"], window["window_s"], window["remaining"]) == (10, 1, 10)
    assert [d["count"] for d in usage["daily"]] == [4, 7]


async def test_usage_set_increment_decrement(admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], usage_limit=10)
    path = f"/v1/keys/{key['id']}/usage"
    assert (await admin.call("POST", path, json={"op": "set", "value": 4},
                             expect=200))["usage_count"] == 4
    assert (await admin.call("POST", path, json={"op": "increment", "value": 3},
                             expect=200))["usage_remaining"] == 3
    assert (await admin.call("POST", path, json={"op": "decrement", "value": 100},
                             expect=200))["usage_count"] == 0
    assert await admin.db.fetchval("SELECT usage_count FROM keys WHERE id = $1", key["id"]) == 0
    body = await admin.call("POST", path, json={"op": "double", "value": 1}, expect=422)
    assert body["error"]["fields"][0]["field"] == "op"
    await admin.call("POST", path, json={"op": "set", "value": -1}, expect=422)


async def test_sub_key_reads_own_usage_but_cannot_change_it(admin: Admin, root: dict[str, Any]
                                                           ) -> None:
    sub = await admin.key(headers=as_key(root["key"]))
    path = f"/v1/keys/{sub['id']}/usage"
    await admin.call("GET", path, headers=as_key(sub["key"]), expect=200)
    await admin.call("POST", path, json={"op": "set", "value": 0}, headers=as_key(sub["key"]),
                     expect=403)
    await admin.call("POST", path, json={"op": "set", "value": 0}, headers=as_key(root["key"]),
                     expect=200)
