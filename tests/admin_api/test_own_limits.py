"""A key may tighten its own limits but never raise them; a root key does not inherit the
organisation's default limits."""

from __future__ import annotations

from typing import Any

import pytest

from tests.admin_api.conftest import Admin, as_key

LIMITS = {"usage_limit": 100, "expires_at": "2099-01-01T00:00:00Z",
          "quota": {"limit": 50, "period": "week"},
          "rate_limits": [{"limit": 10, "window_s": 1}, {"limit": 300, "window_s": 60}]}


@pytest.fixture
async def limited(admin: Admin, org: dict[str, Any]) -> dict[str, Any]:
    return await admin.key(org["id"], root=True, scopes=["*"], owner_id="me", **LIMITS)


@pytest.mark.parametrize("change", [
    {"usage_limit": 99},
    {"usage_limit": 100},  # unchanged is not raised
    {"expires_at": "2098-01-01T00:00:00Z"},
    {"quota": {"limit": 40, "period": "week"}},
    {"rate_limits": [{"limit": 5, "window_s": 1}, {"limit": 300, "window_s": 120}]},
    {"rate_limits": [{"limit": 10, "window_s": 60}]},  # one window stricter than both
    {"rate_limits": [*LIMITS["rate_limits"], {"limit": 1000, "window_s": 3600}]},  # one more
])
async def test_a_key_may_tighten_its_own_limits(admin: Admin, limited: dict[str, Any],
                                                change: dict[str, Any]) -> None:
    updated = await admin.call("PATCH", f"/v1/keys/{limited['id']}", json=change,
                               headers=as_key(limited["key"]), expect=200)
    stored = await admin.call("GET", f"/v1/keys/{limited['id']}", expect=200)
    for field, value in change.items():
        if field == "expires_at":
            assert updated[field].startswith(value[:10]) and stored[field] == updated[field]
        else:
            assert updated[field] == value == stored[field]


@pytest.mark.parametrize(("change", "field"), [
    ({"usage_limit": 101}, "usage_limit"),
    ({"usage_limit": None}, "usage_limit"),
    ({"expires_at": "2099-01-02T00:00:00Z"}, "expires_at"),
    ({"expires_at": None}, "expires_at"),
    ({"quota": {"limit": 51, "period": "week"}}, "quota"),
    ({"quota": {"limit": 50, "period": "day"}}, "quota"),  # 50 a day is more than 50 a week
    # A week can straddle two months: 50 a month allows 100 in the week across the 1st.
    ({"quota": {"limit": 50, "period": "month"}}, "quota"),
    ({"owner_id": "someone-else"}, "owner_id"),  # out of its owner's shared limits
    ({"owner_id": None}, "owner_id"),
    ({"quota": None}, "quota"),
    ({"rate_limits": [{"limit": 10, "window_s": 1}]}, "rate_limits"),  # the minute window gone
    ({"rate_limits": []}, "rate_limits"),
    ({"rate_limits": [{"limit": 11, "window_s": 1}, {"limit": 300, "window_s": 60}]},
     "rate_limits"),
    ({"name": "fine", "usage_limit": 50, "quota": None}, "quota"),
])
async def test_raising_an_own_limit_is_refused_naming_the_field(
        admin: Admin, limited: dict[str, Any], change: dict[str, Any], field: str) -> None:
    body = await admin.call("PATCH", f"/v1/keys/{limited['id']}", json=change,
                            headers=as_key(limited["key"]), expect=403)
    assert body["error"]["code"] == "own_limits_protected"
    assert body["error"]["message"].startswith(f"{field}: ")
    assert "raise" in body["error"]["message"]
    stored = await admin.call("GET", f"/v1/keys/{limited['id']}", expect=200)
    assert {k: stored[k] for k in ("usage_limit", "quota", "rate_limits", "name",
                                   "owner_id")} == {
        "usage_limit": 100, "quota": LIMITS["quota"], "rate_limits": LIMITS["rate_limits"],
        "name": "", "owner_id": "me"}


async def test_a_key_may_only_increment_its_own_usage_count(admin: Admin,
                                                            limited: dict[str, Any]) -> None:
    me = as_key(limited["key"])
    usage = await admin.call("POST", f"/v1/keys/{limited['id']}/usage",
                             json={"op": "increment", "value": 7}, headers=me, expect=200)
    assert usage["usage_count"] == 7
    for op in ("set", "decrement"):
        body = await admin.call("POST", f"/v1/keys/{limited['id']}/usage",
                                json={"op": op, "value": 1}, headers=me, expect=403)
        assert body["error"]["code"] == "own_limits_protected" and op in body["error"]["message"]
    # The operator may still lower it, and may raise limits.
    await admin.call("POST", f"/v1/keys/{limited['id']}/usage", json={"op": "set", "value": 0},
                     expect=200)
    raised = await admin.call("PATCH", f"/v1/keys/{limited['id']}",
                              json={"usage_limit": None}, expect=200)
    assert raised["usage_limit"] is None


async def test_a_root_key_does_not_inherit_default_limits(admin: Admin) -> None:
    defaults = {"scopes": ["orders:read"], "environment": "staging", "usage_limit": 1000,
                "quota": {"limit": 10, "period": "day"},
                "rate_limits": [{"limit": 5, "window_s": 1}], "expires_in_s": 3600}
    org = await admin.org("limited", key_defaults=defaults)
    root = await admin.key(org["id"], root=True)
    assert (root["usage_limit"], root["quota"], root["rate_limits"], root["expires_at"]) == (
        None, None, [], None)
    # Defaults that are not limits still apply, and so do limits the request sets.
    assert root["scopes"] == ["orders:read"] and root["environment"] == "staging"
    capped = await admin.key(org["id"], root=True, usage_limit=7)
    assert capped["usage_limit"] == 7
    # Keys it hands out get every default.
    sub = await admin.key(headers=as_key(root["key"]), name="sub")
    assert sub["usage_limit"] == 1000 and sub["quota"] == defaults["quota"]
    assert sub["rate_limits"] == defaults["rate_limits"] and sub["expires_at"] is not None


async def test_a_daily_quota_may_become_a_weekly_or_monthly_one(admin: Admin,
                                                                 org: dict[str, Any]) -> None:
    """Every day lies inside one week and one month: the same count over either is stricter."""
    key = await admin.key(org["id"], root=True, scopes=["*"],
                          quota={"limit": 50, "period": "day"})
    for period in ("week", "month"):
        changed = await admin.call("PATCH", f"/v1/keys/{key['id']}", headers=as_key(key["key"]),
                                   json={"quota": {"limit": 50, "period": period}}, expect=200)
        assert changed["quota"]["period"] == period
        await admin.call("PATCH", f"/v1/keys/{key['id']}",
                         json={"quota": {"limit": 50, "period": "day"}}, expect=200)


async def test_a_key_may_tighten_but_not_raise_its_owners_shared_limits(
        admin: Admin, org: dict[str, Any], limited: dict[str, Any]) -> None:
    """The limits a key's owner shares bind that key too."""
    me, path = as_key(limited["key"]), f"/v1/orgs/{org['id']}/owners/me/limits"
    shared = [{"limit": 100, "window_s": 60}]
    await admin.call("PUT", path, json={"rate_limits": shared}, expect=200)  # the operator
    for looser in ([{"limit": 101, "window_s": 60}], [{"limit": 100, "window_s": 30}], []):
        body = await admin.call("PUT", path, json={"rate_limits": looser}, headers=me,
                                expect=403)
        assert body["error"]["code"] == "own_limits_protected"
        assert body["error"]["message"].startswith("rate_limits: ")
    body = await admin.call("DELETE", path, headers=me, expect=403)
    assert body["error"]["code"] == "own_limits_protected"
    assert (await admin.call("GET", path, expect=200))["rate_limits"] == shared
    tighter = [{"limit": 50, "window_s": 60}, {"limit": 5, "window_s": 1}]
    await admin.call("PUT", path, json={"rate_limits": tighter}, headers=me, expect=200)
    # Another owner's limits are the root key's to manage, raised or not.
    other = f"/v1/orgs/{org['id']}/owners/clinic-9/limits"
    await admin.call("PUT", other, json={"rate_limits": shared}, headers=me, expect=200)
    await admin.call("DELETE", other, headers=me, expect=204)
