"""Requests over time and "limited now": what the gateway's requests came to, written behind
to PostgreSQL and read back through the admin API."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from admin_api.repository.rollups import RANGES, window
from gateway import rollups
from gateway.database import create_pool
from gateway.keyrecord import SELECT_BY_ID, KeyRecord
from gateway.metrics import HISTORY_DROPPED
from gateway.settings import Settings
from gateway.usage import UsageRecorder
from tests.admin_api.conftest import OPERATOR, Admin, as_key
from tests.gateway.conftest import eventually, one_by_one


async def _series(admin: Admin, headers: dict[str, str] = OPERATOR, **query: str
                  ) -> dict[str, Any]:
    got: dict[str, Any] = await admin.call("GET", "/v1/usage/series", params=query,
                                           headers=headers, expect=200)
    return got


def test_a_range_is_whole_steps_ending_with_the_current_one() -> None:
    now = datetime(2026, 12, 4, 15, 7, 31, tzinfo=UTC)
    assert window(RANGES["hour"], now) == (datetime(2026, 12, 4, 14, 8, tzinfo=UTC),
                                           datetime(2026, 12, 4, 15, 8, tzinfo=UTC))
    assert window(RANGES["day"], now) == (datetime(2026, 12, 3, 15, 15, tzinfo=UTC),
                                          datetime(2026, 12, 4, 15, 15, tzinfo=UTC))
    since, until = window(RANGES["30d"], now)
    assert until == datetime(2026, 12, 5, tzinfo=UTC) and until - since == timedelta(days=30)


async def test_requests_and_refusals_are_charted_per_key_owner_and_organisation(
        admin: Admin, org: dict[str, Any], root: dict[str, Any], gateway: TestClient) -> None:
    limited = await admin.key(org["id"], scopes=["svc:read"], name="busy", owner_id="team-a",
                              rate_limits=[{"limit": 3, "window_s": 3600}])
    other = await admin.key(org["id"], scopes=["svc:read"], name="calm", owner_id="team-b")
    assert await one_by_one(gateway, limited["key"], 5) == [200] * 3 + [429] * 2
    assert await one_by_one(gateway, other["key"], 2) == [200] * 2
    assert await one_by_one(gateway, other["key"], 1, "POST") == [403]  # svc:write lacking

    async def written() -> bool:
        return (await _series(admin, org_id=org["id"]))["totals"]["requests"] == 8
    await eventually(written)

    mine = await _series(admin, key_id=limited["id"])
    assert mine["range"] == "hour" and mine["step_seconds"] == 60 and len(mine["points"]) == 60
    assert mine["totals"] == {"requests": 5, "forwarded": 3, "refused": {"rate_limited": 2},
                              "statuses": {"200": 3, "429": 2}}
    assert sum(p["requests"] for p in mine["points"]) == 5
    assert datetime.fromisoformat(mine["points"][-1]["at"]) <= datetime.now(UTC)

    team_b = await _series(admin, org_id=org["id"], owner_id="team-b")
    assert team_b["totals"] == {"requests": 3, "forwarded": 2,
                                "refused": {"insufficient_scope": 1},
                                "statuses": {"200": 2, "403": 1}}
    for range_, points in (("day", 96), ("30d", 30)):
        wide = await _series(admin, org_id=org["id"], range=range_)
        assert len(wide["points"]) == points and wide["totals"]["requests"] == 8

    limited_for_root = await admin.call("GET", "/v1/usage/limited", expect=200,
                                        headers=as_key(root["key"]))
    assert [k["key_id"] for k in limited_for_root["data"]] == [limited["id"]]
    # A root key reads its own organisation, not another's.
    own = await _series(admin, as_key(root["key"]))
    assert own["totals"]["requests"] == 8
    elsewhere = await admin.org(name="elsewhere", provider_id="elsewhere")
    await admin.call("GET", "/v1/usage/series", params={"org_id": elsewhere["id"]},
                     headers=as_key(root["key"]), expect=403)
    stranger = await admin.key(elsewhere["id"])
    await admin.call("GET", "/v1/usage/series", params={"key_id": stranger["id"]},
                     headers=as_key(root["key"]), expect=404)

    now = await admin.call("GET", "/v1/usage/limited", params={"org_id": org["id"]},
                           headers=OPERATOR, expect=200)
    assert now["minutes"] == 5
    assert [(k["key_id"], k["name"], k["limited"], k["requests"]) for k in now["data"]] == [
        (limited["id"], "busy", 2, 5)]
    assert now["data"][0]["prefix"] == limited["prefix"] and "key" not in now["data"][0]


async def test_bad_queries_say_what_to_fix(admin: Admin, org: dict[str, Any]) -> None:
    bad = await admin.call("GET", "/v1/usage/series", params={"range": "week"},
                           headers=OPERATOR, expect=422)
    assert "range" in bad["error"]["message"]
    bad = await admin.call("GET", "/v1/usage/series", params={"owner_id": "team-a"},
                           headers=OPERATOR, expect=422)
    assert "send org_id" in bad["error"]["message"]
    bad = await admin.call("GET", "/v1/usage/limited", params={"minutes": "0"},
                           headers=OPERATOR, expect=422)
    assert "minutes" in bad["error"]["message"]


async def test_keys_verified_through_the_admin_api_are_charted_too(
        admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], scopes=["svc:read"],
                          rate_limits=[{"limit": 2, "window_s": 3600}])
    codes = []
    for scopes in (["svc:read"], ["svc:read"], ["svc:read"], ["svc:write"]):
        got = await admin.call("POST", "/v1/verify", json={"key": key["key"], "scopes": scopes},
                               headers=OPERATOR, expect=200)
        codes.append(got["code"])
    assert codes == ["valid", "valid", "rate_limited", "insufficient_scope"]

    async def written() -> bool:
        return bool((await _series(admin, key_id=key["id"]))["totals"]["requests"] == 4)
    await eventually(written)
    assert (await _series(admin, key_id=key["id"]))["totals"] == {
        "requests": 4, "forwarded": 2,
        "refused": {"rate_limited": 1, "insufficient_scope": 1},
        "statuses": {"200": 2, "429": 1, "403": 1}}


async def test_an_owner_change_within_one_flush_is_written_under_the_new_owner(
        admin: Admin, org: dict[str, Any], settings: Settings) -> None:
    """Two owners of one key in one batch once made the history insert fail — and, in the
    same transaction, the usage counts with it, at every retry."""
    key = await admin.key(org["id"], owner_id="alice")
    record = KeyRecord.from_row(await admin.db.fetchrow(SELECT_BY_ID, key["id"]))
    recorder = UsageRecorder()
    now = datetime.now(UTC)
    recorder.record(key["id"], 1, now)
    recorder.outcome(record, 200, "")
    recorder.record(key["id"], 1, now)
    recorder.outcome(replace(record, owner_id="bob"), 200, "")  # PATCH owner_id meanwhile
    pool = await create_pool(settings.database_url, settings.stores)
    try:
        await recorder.flush(pool)
    finally:
        await pool.close()
    assert await admin.db.fetchval("SELECT usage_count FROM keys WHERE id = $1", key["id"]) == 2
    rows = await admin.db.fetch("SELECT owner_id, count FROM usage_minutes WHERE key_id = $1",
                                key["id"])
    assert [(r["owner_id"], r["count"]) for r in rows] == [("bob", 2)]
    org_total = await admin.db.fetchval(
        "SELECT sum(count) FROM usage_org_hours WHERE org_id = $1", org["id"])
    assert org_total == 2


def test_the_history_a_process_holds_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """While PostgreSQL cannot take it, a process keeps at most MAX_PENDING slots; what does
    not fit is counted as dropped, and slots it holds still count."""
    monkeypatch.setattr(rollups, "MAX_PENDING", 2)
    record = KeyRecord.from_values({
        "id": "key_a", "serial": 1, "org_id": "org_a", "owner_id": None, "name": "a",
        "environment": "production", "root": False, "parent_id": None, "scopes": [],
        "status": "active", "expires_at": None, "usage_limit": None, "usage_count": 0,
        "quota": None, "rate_limits": [], "is_default": False, "metadata": {}, "prefix": "p",
        "key_prefix": "ks", "recoverable": False, "created_at": datetime.now(UTC),
        "updated_at": datetime.now(UTC), "last_used_at": None, "revoked_at": None})
    history = rollups.History()
    before = HISTORY_DROPPED._value.get()
    for minute, status in ((1, 200), (1, 429), (2, 200), (1, 200)):
        history.count(record, minute, status, "")
    assert history.counts == {("key_a", 1, 200, ""): 2, ("key_a", 1, 429, ""): 1}
    assert HISTORY_DROPPED._value.get() == before + 1
