"""``keystile orgs|keys|usage`` run as a child process against a real admin API: what a
script sees on stdout, stderr and in the exit code."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from keystile.embedded import free_port
from keystile.ops import RAW_KEY_NOTICE
from tests.admin_api.conftest import (  # noqa: F401
    OPERATOR_TOKEN,
    Admin,
    admin,
    as_key,
    org,
    root,
    settings,
)
from tests.keystile.conftest import Cli

Result = subprocess.CompletedProcess[str]


async def ks(cli: Cli, url: object, *args: str, token: str = OPERATOR_TOKEN,
             key: str = "") -> Result:
    """The command with exactly these credentials (empty: unset), whatever this shell has."""
    env = {"KEYSTILE_ADMIN_URL": str(url), "KEYSTILE_ADMIN_TOKEN": token,
           "KEYSTILE_ADMIN_KEY": key}
    result = await asyncio.to_thread(cli.run, *args, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ok(result: Result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def failed(result: Result, code: int, *needles: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


def field(table: str, name: str) -> str:
    """A value from a FIELD/VALUE table."""
    for line in table.splitlines():
        head, _, value = line.partition(" ")
        if head == name:
            return value.strip()
    raise AssertionError(f"no {name} in:\n{table}")


async def test_create_prints_the_raw_key_once_and_list_shows_it(
        cli: Cli, admin: Admin, org: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    out = ok(await ks(cli, url, "keys", "create", "--org", org["id"], "--name", "ci-bot",
                      "--owner", "bot", "--scope", "echo:read", "--scope", "echo:write",
                      "--rate-limit", "10/s", "--rate-limit", "100/1m", "--quota", "1000/day",
                      "--usage-limit", "50"))
    notice, raw = out.splitlines()[-2:]
    assert notice == RAW_KEY_NOTICE and raw.startswith("ks_live_")
    assert out.count(raw) == 1
    key_id = field(out, "id")
    assert field(out, "rate_limits") == "10/1s, 100/60s"
    assert field(out, "quota") == "1000/day"
    me = await admin.call("GET", "/v1/keys/self", headers=as_key(raw), expect=200)
    assert me["id"] == key_id and me["scopes"] == ["echo:read", "echo:write"]

    listed = ok(await ks(cli, url, "keys", "list", "--org", org["id"]))
    assert rows(listed)[0] == ["ID", "ORG_ID", "OWNER_ID", "NAME", "STATUS", "PREFIX",
                               "SCOPES", "EXPIRES_AT"]
    assert rows(listed)[1] == [key_id, org["id"], "bot", "ci-bot", "active", me["prefix"],
                               "echo:read,echo:write", "-"]
    assert raw not in listed

    as_json = json.loads(ok(await ks(cli, url, "keys", "list", "--org", org["id"], "--json")))
    assert as_json == await admin.call("GET", f"/v1/keys?org_id={org['id']}", expect=200)


async def test_pause_resume_revoke(
        cli: Cli, admin: Admin, org: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    key = await admin.key(org["id"], name="k")

    async def status() -> str:
        shown = json.loads(ok(await ks(cli, url, "keys", "show", key["id"], "--json")))
        return str(shown["status"])

    for action, expected in (("pause", "paused"), ("resume", "active"), ("revoke", "revoked")):
        assert ok(await ks(cli, url, "keys", action, key["id"])) == f"{key['id']}  {expected}\n"
        assert await status() == expected
    failed(await ks(cli, url, "keys", "resume", key["id"]), 1, "keystile: key_revoked: ")


async def test_rotate_prints_a_new_key_that_works(
        cli: Cli, admin: Admin, org: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    key = await admin.key(org["id"], name="k")
    out = ok(await ks(cli, url, "keys", "rotate", key["id"]))
    new = out.splitlines()[-1]
    assert out.splitlines()[-2] == RAW_KEY_NOTICE and new != key["key"]
    assert (await admin.call("GET", "/v1/keys/self", headers=as_key(new), expect=200)
            )["id"] == key["id"]
    await admin.call("GET", "/v1/keys/self", headers=as_key(key["key"]), expect=401)

    rotated = json.loads(ok(await ks(cli, url, "keys", "rotate", key["id"], "--grace", "300",
                                     "--json")))
    assert rotated["id"] == key["id"] and rotated["previous_expires_at"] is not None
    await admin.call("GET", "/v1/keys/self", headers=as_key(rotated["key"]), expect=200)
    await admin.call("GET", "/v1/keys/self", headers=as_key(new), expect=200)  # in its grace


async def test_set_limits_changes_only_what_is_given(
        cli: Cli, admin: Admin, org: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    key = await admin.key(org["id"], usage_limit=5, quota={"limit": 10, "period": "day"},
                          rate_limits=[{"limit": 1, "window_s": 1}])

    async def shown() -> dict[str, Any]:
        return dict(json.loads(ok(await ks(cli, url, "keys", "show", key["id"], "--json"))))

    out = ok(await ks(cli, url, "keys", "set-limits", key["id"], "--rate-limit", "100/60s",
                      "--rate-limit", "5000/1h", "--usage-limit", "none", "--quota",
                      "1000/week"))
    assert field(out, "rate_limits") == "100/60s, 5000/3600s"
    now = await shown()
    assert now["rate_limits"] == [{"limit": 100, "window_s": 60},
                                  {"limit": 5000, "window_s": 3600}]
    assert now["usage_limit"] is None and now["quota"] == {"limit": 1000, "period": "week"}

    ok(await ks(cli, url, "keys", "set-limits", key["id"], "--no-rate-limits",
                "--usage-limit", "7"))
    now = await shown()
    assert now["rate_limits"] == [] and now["usage_limit"] == 7
    assert now["quota"] == {"limit": 1000, "period": "week"}  # not given: kept

    ok(await ks(cli, url, "keys", "set-limits", key["id"], "--shadow"))
    assert (await shown())["shadow_limits"] is True
    ok(await ks(cli, url, "keys", "set-limits", key["id"], "--enforce"))
    now = await shown()
    assert now["shadow_limits"] is False and now["usage_limit"] == 7


async def test_orgs_create_list_show_delete(
        cli: Cli, admin: Admin, org: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    out = ok(await ks(cli, url, "orgs", "create", "--name", "Regen", "--provider-id", "regen",
                      "--key-prefix", "rg", "--default-scope", "orders:read",
                      "--default-usage-limit", "1000", "--rate-limit", "500/s"))
    regen = field(out, "id")
    assert field(out, "provider_id") == "regen" and field(out, "rate_limits") == "500/1s"

    listed = rows(ok(await ks(cli, url, "orgs", "list")))
    assert listed[0] == ["ID", "PROVIDER_ID", "KEY_PREFIX", "NAME", "CREATED_AT"]
    assert sorted(r[:3] for r in listed[1:]) == sorted(
        [[org["id"], "acme", "ks_live"], [regen, "regen", "rg"]])

    shown = json.loads(ok(await ks(cli, url, "orgs", "show", regen, "--json")))
    assert shown["key_defaults"]["scopes"] == ["orders:read"]
    assert shown["key_defaults"]["usage_limit"] == 1000

    await admin.key(regen)
    failed(await ks(cli, url, "orgs", "delete", regen), 1, "keystile: org_has_keys: ",
           "cascade")
    assert ok(await ks(cli, url, "orgs", "delete", regen, "--cascade")) == \
        f"deleted organisation {regen}\n"
    failed(await ks(cli, url, "orgs", "show", regen), 3, "keystile: org_not_found: ")


async def test_list_follows_the_cursor_up_to_the_limit(
        cli: Cli, admin: Admin, org: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    # More than the API's largest page (1000), so the command must follow next_cursor.
    await admin.db.execute(
        "INSERT INTO orgs (id, name, provider_id, key_prefix) "
        "SELECT 'org_bulk' || lpad(i::text, 4, '0'), 'bulk', 'bulk' || i, 'ks_live' "
        "FROM generate_series(1, 1100) AS i")
    every = json.loads(ok(await ks(cli, url, "orgs", "list", "--json")))
    assert len(every["data"]) == 1101 and every["next_cursor"] is None
    assert len({o["id"] for o in every["data"]}) == 1101

    some = await ks(cli, url, "orgs", "list", "--json", "--limit", "1050")
    page = json.loads(ok(some))
    assert [o["id"] for o in page["data"]] == [o["id"] for o in every["data"][:1050]]
    assert page["next_cursor"] is not None and "beyond --limit 1050" in some.stderr


async def test_a_root_key_sees_only_its_organisation(
        cli: Cli, admin: Admin, org: dict[str, Any], root: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    mine = await admin.key(org["id"], name="mine")
    other = await admin.key((await admin.org("other"))["id"], name="theirs")

    def as_root(*args: str) -> Any:
        return ks(cli, url, *args, token="", key=root["key"])

    listed = json.loads(ok(await as_root("keys", "list", "--json")))
    assert {k["id"] for k in listed["data"]} == {root["id"], mine["id"]}
    failed(await as_root("keys", "show", other["id"]), 3, "keystile: key_not_found: ")
    failed(await as_root("orgs", "list"), 4, "keystile: operator_required: ")
    made = json.loads(ok(await as_root("keys", "create", "--name", "by-root", "--json")))
    assert made["org_id"] == org["id"]


async def test_exit_codes(
        cli: Cli, admin: Admin, org: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    failed(await ks(cli, url, "keys", "show", "key_nope"), 3,
           "keystile: key_not_found: no key")
    wrong = failed(await ks(cli, url, "keys", "list", token="not-the-operator-token"), 4,
                   "keystile: invalid_credentials: ")
    assert "hint" not in wrong and "not-the-operator-token" not in wrong
    failed(await ks(cli, url, "keys", "list", token=""), 4, "keystile: missing_key: ",
           "hint: set KEYSTILE_ADMIN_TOKEN")
    closed = f"http://127.0.0.1:{free_port()}"
    failed(await ks(cli, closed, "orgs", "list"), 5, "cannot reach the admin API at " + closed)
    failed(await ks(cli, url, "keys", "create", "--org", org["id"], "--rate-limit", "0/1s"),
           1, "keystile: validation_failed: ", "rate_limits.0.limit")
    failed(await ks(cli, url, "keys", "create", "--rate-limit", "fast"), 2,
           "is not a rate limit")
    failed(await ks(cli, "ftp://example.org", "orgs", "list"), 2, "KEYSTILE_ADMIN_URL")
    failed(await ks(cli, "http://127.0.0.1:99999", "orgs", "list"), 2, "KEYSTILE_ADMIN_URL")
    failed(await ks(cli, url, "orgs", "list", token="two\nlines"), 4, "KEYSTILE_ADMIN_TOKEN")


async def test_usage_shows_the_counters(
        cli: Cli, admin: Admin, org: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    key = await admin.key(org["id"], usage_limit=100, rate_limits=[{"limit": 10,
                                                                    "window_s": 1}])
    await admin.call("POST", f"/v1/keys/{key['id']}/usage", json={"op": "set", "value": 3},
                     expect=200)
    out = ok(await ks(cli, url, "usage", key["id"]))
    assert field(out, "usage_count") == "3" and field(out, "usage_remaining") == "97"
    assert rows(out)[5] == ["RATE_LIMIT", "REMAINING", "RESETS_AT"]
    assert rows(out)[6][:2] == ["10/1s", "10"]
    as_json = json.loads(ok(await ks(cli, url, "usage", key["id"], "--json")))
    assert as_json["usage_count"] == 3 and as_json["usage_limit"] == 100


SERIES = {"range": "hour", "step_seconds": 60, "since": "2030-01-01T10:00:00Z",
          "until": "2030-01-01T11:00:00Z",
          "points": [{"at": "2030-01-01T10:00:00Z", "requests": 5, "forwarded": 3,
                      "refused": {"rate_limited": 2}},
                     {"at": "2030-01-01T10:01:00Z", "requests": 1, "forwarded": 0,
                      "refused": {"usage_exceeded": 1}}],
          "totals": {"requests": 6, "forwarded": 3,
                     "refused": {"rate_limited": 2, "usage_exceeded": 1}}}


async def test_usage_range_and_answers_the_admin_api_should_not_give(cli: Cli) -> None:
    """A stand-in server: GET /v1/usage/series with points the table must lay out, a 5xx and
    a page that is not JSON."""
    asked: list[dict[str, str]] = []

    async def series(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        return web.json_response(SERIES)

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "store_unavailable", "message": "retry",
                                            "request_id": "r"}}, status=503)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>a web page</html>", content_type="text/html")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://elsewhere.test/steal")

    app = web.Application()
    app.router.add_get("/v1/orgs/{id}", moved)
    app.router.add_get("/v1/usage/series", series)
    app.router.add_get("/v1/keys/{id}", broken)
    app.router.add_get("/v1/orgs", page)
    server = TestServer(app)
    await server.start_server()
    try:
        out = ok(await ks(cli, server.make_url(""), "usage", "key_1", "--range", "hour"))
        as_json = json.loads(ok(await ks(cli, server.make_url(""), "usage", "key_1",
                                         "--range", "hour", "--json")))
        failed(await ks(cli, server.make_url(""), "keys", "show", "key_1"), 5,
               "keystile: store_unavailable: retry")
        failed(await ks(cli, server.make_url(""), "orgs", "list"), 5, "other than JSON")
        failed(await ks(cli, server.make_url(""), "orgs", "show", "org_1"), 5,
               "302, a redirect to http://elsewhere.test/steal")
    finally:
        await server.close()
    assert asked[0] == {"key_id": "key_1", "range": "hour"}
    assert as_json == SERIES
    table = rows(out)
    assert table[2] == ["AT", "REQUESTS", "FORWARDED", "REFUSED", "RATE_LIMITED",
                        "USAGE_EXCEEDED"]
    assert table[3] == ["total", "6", "3", "3", "2", "1"]
    assert table[6:] == [["2030-01-01T10:00:00Z", "5", "3", "2", "2", "0"],
                         ["2030-01-01T10:01:00Z", "1", "0", "1", "0", "1"]]


async def test_usage_range_and_search_against_the_admin_api(
        cli: Cli, admin: Admin, org: dict[str, Any]) -> None:  # noqa: F811
    url = admin.client.make_url("")
    key = await admin.key(org["id"], name="Billing export", owner_id="team-a")
    await admin.key(org["id"], name="other")
    # What the gateway's flush writes: 4 forwarded and 2 refused this minute.
    minute = await admin.db.fetchval("SELECT date_trunc('minute', now())")
    await admin.db.executemany(
        """INSERT INTO usage_minutes (bucket, key_id, org_id, owner_id, status, code, count)
        VALUES ($1, $2, $3, 'team-a', $4, $5, $6)""",
        [(minute, key["id"], org["id"], 200, "", 4),
         (minute, key["id"], org["id"], 429, "rate_limited", 2)])
    doc = json.loads(ok(await ks(cli, url, "usage", key["id"], "--range", "hour", "--json")))
    assert doc["totals"] == {"requests": 6, "forwarded": 4, "refused": {"rate_limited": 2},
                             "statuses": {"200": 4, "429": 2}}
    table = rows(ok(await ks(cli, url, "usage", key["id"], "--range", "hour")))
    assert table[3] == ["total", "6", "4", "2", "2"]
    at = minute.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    assert [row[1:] for row in table if row and row[0].startswith(at)] == [["6", "4", "2", "2"]]
    listed = json.loads(ok(await ks(cli, url, "keys", "list", "--search", "billing", "--json")))
    assert [k["id"] for k in listed["data"]] == [key["id"]]
