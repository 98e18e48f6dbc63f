"""The console's session, as a browser meets it: log in once, a cookie that holds no
credential, scripts cannot read, other sites cannot send and only the console's paths
receive; the same answers as the API; no forged changes; and a session that ends when the
credential behind it does."""

from __future__ import annotations

import base64
from http.cookies import SimpleCookie
from typing import Any

from admin_api import session
from admin_api.session import COOKIE
from tests.admin_api.conftest import OPERATOR_TOKEN, Admin

CONSOLE = {"X-Keystile-Console": "1"}
API = session.API


async def _log_in(admin: Admin, credential: str, expect: int = 200
                  ) -> tuple[dict[str, str], Any]:
    resp = await admin.client.post("/console/session", json={"credential": credential},
                                   headers=CONSOLE)
    body = await resp.json()
    assert resp.status == expect, body
    if expect != 200:
        return {}, body
    cookie = SimpleCookie(resp.headers["Set-Cookie"])[COOKIE]
    assert cookie["httponly"] is True and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console" and not cookie["max-age"] and not cookie["expires"]
    # The cookie is a random id: the credential is in it in no form.
    for form in (credential, base64.urlsafe_b64encode(credential.encode()).decode()[:20]):
        assert form not in resp.headers["Set-Cookie"]
    return {"Cookie": f"{COOKIE}={cookie.value}"}, body


async def test_the_console_page_is_served_with_a_strict_content_policy(admin: Admin) -> None:
    resp = await admin.client.get("/console")
    assert resp.status == 200 and "<title>Keystile console</title>" in await resp.text()
    policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    script = await admin.client.get("/console/static/console.js")
    assert script.status == 200 and "X-Keystile-Console" in await script.text()


async def test_the_operator_logs_in_once_and_uses_the_api_with_the_session(
        admin: Admin, org: dict[str, Any]) -> None:
    cookie, who = await _log_in(admin, OPERATOR_TOKEN)
    assert who == {"kind": "operator"}
    resp = await admin.client.get("/console/session", headers=cookie)
    assert (await resp.json()) == {"kind": "operator"}
    listed = await admin.call("GET", f"{API}/v1/orgs", headers=cookie, expect=200)
    assert [o["id"] for o in listed["data"]] == [org["id"]]
    made = await admin.call("POST", f"{API}/v1/keys", json={"org_id": org["id"], "name": "k"},
                            headers={**cookie, **CONSOLE}, expect=201)
    audit = await admin.db.fetchrow("SELECT actor_type FROM audit_log WHERE target_id = $1",
                                    made["id"])
    assert audit is not None and audit["actor_type"] == "operator"
    # The API's own paths take no session: only the console's.
    refused = await admin.call("GET", "/v1/orgs", headers=cookie, expect=401)
    assert refused["error"]["code"] == "missing_key"
    # Logging out ends the session itself, not only the browser's cookie.
    out = await admin.client.delete("/console/session", headers={**cookie, **CONSOLE})
    assert out.status == 204
    assert SimpleCookie(out.headers["Set-Cookie"])[COOKIE].value == ""
    ended = await admin.call("GET", f"{API}/v1/orgs", headers=cookie, expect=401)
    assert ended["error"]["code"] == "invalid_session"
    assert await admin.db.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_a_change_without_the_console_header_or_from_another_site_is_refused(
        admin: Admin, org: dict[str, Any]) -> None:
    cookie, _ = await _log_in(admin, OPERATOR_TOKEN)
    key = await admin.key(org["id"])
    forged = await admin.call("POST", f"{API}/v1/keys/{key['id']}/revoke", headers=cookie,
                              expect=403)
    assert forged["error"]["code"] == "csrf_check_failed"
    assert "X-Keystile-Console: 1" in forged["error"]["message"]
    elsewhere = await admin.call("POST", f"{API}/v1/keys/{key['id']}/revoke", expect=403,
                                 headers={**cookie, **CONSOLE, "Origin": "https://evil.test"})
    assert elsewhere["error"]["code"] == "csrf_check_failed"
    login = await admin.client.post("/console/session", json={"credential": OPERATOR_TOKEN})
    assert login.status == 403  # a login is a change: another site cannot make one either
    assert (await admin.call("GET", f"/v1/keys/{key['id']}", expect=200))["status"] == "active"
    same_site = await admin.call("POST", f"{API}/v1/keys/{key['id']}/pause", expect=200,
                                 headers={**cookie, **CONSOLE, "Origin": str(
                                     admin.client.make_url("")).rstrip("/")})
    assert same_site["status"] == "paused"


async def test_a_root_key_sees_only_its_own_organisation_until_it_is_rotated(
        admin: Admin, org: dict[str, Any], root: dict[str, Any]) -> None:
    other = await admin.org(name="other", provider_id="other")
    await admin.key(other["id"], name="theirs")
    cookie, who = await _log_in(admin, root["key"])
    assert who["kind"] == "key" and who["org_id"] == org["id"]
    assert "key" not in who and root["key"] not in str(who)
    listed = await admin.call("GET", f"{API}/v1/keys", headers=cookie, expect=200)
    assert {k["org_id"] for k in listed["data"]} == {org["id"]}
    refused = await admin.call("GET", f"{API}/v1/orgs", headers=cookie, expect=403)
    assert refused["error"]["code"] == "operator_required"
    # The session is the secret it logged in with: a rotation (no grace) ends it.
    await admin.call("POST", f"/v1/keys/{root['id']}/rotate", json={"grace_seconds": 0},
                     expect=200)
    ended = await admin.call("GET", f"{API}/v1/keys", headers=cookie, expect=401)
    assert ended["error"]["code"] == "invalid_key"


async def test_wrong_credentials_get_the_same_clear_messages(
        admin: Admin, org: dict[str, Any]) -> None:
    _, body = await _log_in(admin, "not-a-token", expect=401)
    assert "neither the operator token nor a key" in body["error"]["message"]
    assert "not-a-token" not in str(body)
    sub = await admin.key(org["id"])
    _, body = await _log_in(admin, sub["key"], expect=403)
    assert body["error"]["code"] == "root_key_required"
    revoked = await admin.key(org["id"], root=True)
    await admin.call("POST", f"/v1/keys/{revoked['id']}/revoke", expect=200)
    _, body = await _log_in(admin, revoked["key"], expect=401)
    assert body["error"]["code"] == "key_revoked"
    resp = await admin.client.post("/console/session", json={"token": "x"}, headers=CONSOLE)
    assert resp.status == 422 and "credential" in (await resp.json())["error"]["message"]
    resp = await admin.client.get("/console/session")
    assert resp.status == 401
    resp = await admin.client.get(f"{API}/v1/keys", headers={"Cookie": f"{COOKIE}=made-up"})
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_session"


async def test_without_a_session_only_the_pages_and_the_login_answer(admin: Admin) -> None:
    for path in ("/console", "/console/", "/console/static/console.css"):
        assert (await admin.client.get(path)).status == 200, path
    resp = await admin.client.get("/console/session")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_session"
    resp = await admin.client.get("/console/static/../../session.py")
    assert resp.status in (403, 404)
    resp = await admin.client.delete("/console/session")  # not from the console: refused
    assert resp.status == 403
    resp = await admin.client.get(f"{API}/v1/keys")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_key"
