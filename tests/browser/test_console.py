"""The console as an operator uses it, in headless Chromium: log in, find a key, see the
requests just sent through the gateway on its chart, lower its rate limit, watch the next
requests get 429 and the key show up under "Limited now", revoke it, see the audit entry —
at desktop and phone sizes, with axe-core finding no serious accessibility problem."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.admin_api.conftest import OPERATOR, OPERATOR_TOKEN, Admin
from tests.browser.conftest import DESKTOP, PHONE, axe_violations, resize, screenshot
from tests.gateway.conftest import eventually, one_by_one

WAIT_S = 10


def _wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    """Polls until a condition holds; a page redrawn meanwhile is asked again."""
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=[StaleElementReferenceException])


def _text_in(driver: WebDriver, css: str, text: str) -> WebElement:
    _wait(driver).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
    return driver.find_element(By.CSS_SELECTOR, css)


def _check_page(driver: WebDriver, name: str, raw_keys: list[str]) -> None:
    """What every page must hold, at both sizes: no serious accessibility violation, nothing
    wider than a phone's screen, and no raw key anywhere in it."""
    for size, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        resize(driver, size)
        screenshot(driver, f"{name}-{label}")
        found = axe_violations(driver)
        assert not found, [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3])
                           for v in found]
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth;")
        assert overflow <= 0, f"{name} is {overflow}px wider than a {label} screen"
        html = driver.page_source
        assert not any(raw in html for raw in raw_keys), f"a raw key is shown on {name}"
        stray = driver.execute_script(
            "return [...document.querySelectorAll('#view, #view *')].flatMap(e => "
            "[...e.childNodes]).filter(n => n.nodeType === 3 && "
            "/^(null|undefined|\\[object Object\\])$/.test(n.textContent.trim())).length;")
        assert stray == 0, f"{name} shows {stray} stray null/undefined text(s)"
    resize(driver, DESKTOP)


async def _series_total(admin: Admin, key_id: str, want: int) -> None:
    async def written() -> bool:
        got = await admin.call("GET", "/v1/usage/series", params={"key_id": key_id},
                               headers=OPERATOR, expect=200)
        return bool(got["totals"]["requests"] == want)
    await eventually(written)


async def test_an_operator_finds_limits_and_revokes_a_key(
        browser: WebDriver, admin: Admin, org: dict[str, Any], gateway: TestClient,
        ) -> None:
    console = str(admin.client.make_url("/console"))
    key = await admin.key(org["id"], name="flow key", owner_id="clinic-7",
                          scopes=["svc:read"], rate_limits=[{"limit": 100, "window_s": 3600}])
    await admin.key(org["id"], name="bystander", scopes=["svc:read"])
    raw_keys = [key["key"]]
    assert await one_by_one(gateway, key["key"], 5) == [200] * 5
    await _series_total(admin, key["id"], 5)

    def log_in_and_find_the_key() -> None:
        browser.get(console)
        _text_in(browser, "h2", "Log in")
        _check_page(browser, "login", raw_keys)
        # A wrong token gets the API's own message, and no way in.
        browser.find_element(By.NAME, "credential").send_keys("wrong-token")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        _text_in(browser, "#flash", "neither the operator token nor a key")
        field = browser.find_element(By.NAME, "credential")
        field.clear()
        field.send_keys(OPERATOR_TOKEN)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        _text_in(browser, "h1", "Organisations")
        assert browser.get_cookie("keystile_console")["httpOnly"] is True  # type: ignore[index]
        assert browser.execute_script("return document.cookie;") == ""  # scripts see nothing
        _check_page(browser, "organisations", raw_keys)
        browser.find_element(By.LINK_TEXT, org["name"]).click()
        _text_in(browser, "h1", "Keys of")
        search = browser.find_element(By.NAME, "search")
        search.send_keys("clinic-7")  # by owner
        browser.find_element(By.XPATH, "//button[text()='Search']").click()
        _wait(browser).until(lambda d: "bystander" not in d.find_element(By.TAG_NAME,
                                                                         "table").text)
        _check_page(browser, "keys", raw_keys)
        browser.find_element(By.LINK_TEXT, "flow key").click()
        _text_in(browser, "h1", "Key flow key")
        # The chart holds the five requests just sent; the live usage shows them spent.
        _text_in(browser, ".totals", "5 requests · 5 forwarded")
        _text_in(browser, "#main", "100 per 3600 s: 5 of 100")
        _text_in(browser, "#main", "Lifetime usage: 5 spent, no limit")
        _check_page(browser, "key", raw_keys)

    await asyncio.to_thread(log_in_and_find_the_key)

    def lower_the_rate_limit() -> None:
        limit = browser.find_element(By.CSS_SELECTOR, "fieldset.window input[name=limit]")
        limit.clear()
        limit.send_keys("0")  # bad input: the API's own message, nothing changed
        browser.find_element(By.XPATH, "//button[text()='Save limits']").click()
        _text_in(browser, "#flash", "rate_limits.0.limit")
        limit = browser.find_element(By.CSS_SELECTOR, "fieldset.window input[name=limit]")
        limit.clear()
        limit.send_keys("2")
        browser.find_element(By.XPATH, "//button[text()='Save limits']").click()
        _text_in(browser, "#flash", "Limits saved.")
        _text_in(browser, "#main", "2 per 3600 s")

    await asyncio.to_thread(lower_the_rate_limit)
    stored = await admin.call("GET", f"/v1/keys/{key['id']}", expect=200)
    assert stored["rate_limits"] == [{"limit": 2, "window_s": 3600}]
    assert await one_by_one(gateway, key["key"], 3) == [429] * 3
    await _series_total(admin, key["id"], 8)

    def see_it_limited_then_revoke_it() -> None:
        browser.find_element(By.LINK_TEXT, "Limited now").click()
        row = _text_in(browser, "#limited table", "flow key")
        assert "clinic-7" in row.text and " 3 8 " in f" {row.text} ".replace("\n", " ")
        _check_page(browser, "limited", raw_keys)
        browser.find_element(By.LINK_TEXT, "flow key").click()
        _text_in(browser, "h1", "Key flow key")
        _text_in(browser, ".totals", "refused: 3 rate_limited")
        browser.find_element(By.XPATH, "//button[text()='Revoke']").click()
        _wait(browser).until(ec.alert_is_present())
        browser.switch_to.alert.accept()
        _text_in(browser, ".facts", "revoked")
        audit = _text_in(browser, "section[aria-labelledby=audit-h] table", "key.revoke")
        assert "key.update" in audit.text and "operator" in audit.text
        _check_page(browser, "key-revoked", raw_keys)
        browser.find_element(By.XPATH, "//button[text()='Log out']").click()
        _text_in(browser, "h2", "Log in")

    await asyncio.to_thread(see_it_limited_then_revoke_it)
    assert await admin.db.fetchval("SELECT count(*) FROM console_sessions") == 0
    assert (await admin.call("GET", f"/v1/keys/{key['id']}", expect=200))["status"] == "revoked"
    assert await one_by_one(gateway, key["key"], 1) == [401]


async def test_a_new_key_is_shown_once_and_a_root_key_sees_its_own_organisation(
        browser: WebDriver, admin: Admin, org: dict[str, Any], root: dict[str, Any]) -> None:
    console = str(admin.client.make_url("/console"))
    other = await admin.org(name="other co", provider_id="other")
    await admin.key(other["id"], name="not yours")

    def as_a_root_key() -> str:
        browser.get(console)
        _text_in(browser, "h2", "Log in")
        # By keyboard alone: the field has the focus, Enter logs in.
        browser.switch_to.active_element.send_keys(root["key"], Keys.ENTER)
        _text_in(browser, "h1", "Keys of")
        assert "not yours" not in browser.find_element(By.TAG_NAME, "main").text
        assert root["key"] not in browser.page_source
        browser.find_element(By.NAME, "name").send_keys("made in the console")
        browser.find_element(By.NAME, "scopes").send_keys("svc:read")
        browser.find_element(By.XPATH, "//button[text()='Create key']").click()
        shown = _text_in(browser, ".once", "copy it now").find_element(By.CSS_SELECTOR,
                                                                        "code.raw").text
        _check_page(browser, "key-created", [root["key"]])
        browser.find_element(By.XPATH, "//button[text()='Done, hide it']").click()
        _wait(browser).until(lambda d: shown not in d.page_source)
        browser.refresh()
        _text_in(browser, "table", "made in the console")
        assert shown not in browser.page_source
        # Rotating shows the new secret once, the same way.
        browser.find_element(By.LINK_TEXT, "made in the console").click()
        _text_in(browser, "h1", "Key made in the console")
        browser.find_element(By.XPATH, "//button[text()='Rotate']").click()
        _wait(browser).until(ec.alert_is_present())
        browser.switch_to.alert.accept()
        rotated = _text_in(browser, ".once", "New secret").find_element(By.CSS_SELECTOR,
                                                                         "code.raw").text
        assert rotated != shown and rotated.startswith(org["key_prefix"])
        browser.find_element(By.XPATH, "//button[text()='Done, hide it']").click()
        _wait(browser).until(lambda d: rotated not in d.page_source)
        shown = rotated
        browser.find_element(By.LINK_TEXT, "Keys").click()
        browser.find_element(By.LINK_TEXT, "Webhooks").click()
        _text_in(browser, "h1", "Webhooks")
        _check_page(browser, "webhooks", [root["key"], shown])
        browser.find_element(By.LINK_TEXT, "Audit log").click()
        _text_in(browser, "table", "key.create")
        _check_page(browser, "audit", [root["key"], shown])
        return shown

    shown = await asyncio.to_thread(as_a_root_key)

    def rotate_itself() -> str:
        """Rotating the key you are logged in with ends the session at once; its new secret
        stays on screen (the login page) until dismissed, and logs in."""
        browser.get(f"{console}#/keys/{root['id']}")
        _text_in(browser, ".facts", root["id"])
        browser.find_element(By.XPATH, "//button[text()='Rotate']").click()
        _wait(browser).until(ec.alert_is_present())
        assert "ends your session" in browser.switch_to.alert.text
        browser.switch_to.alert.accept()
        _wait(browser).until(ec.presence_of_element_located((By.XPATH,
                                                             "//h2[text()='Log in']")))
        _text_in(browser, "#flash", "Logged out")
        secret = _text_in(browser, ".once", "New secret").find_element(By.CSS_SELECTOR,
                                                                        "code.raw").text
        assert secret != root["key"]
        browser.find_element(By.XPATH, "//button[text()='Done, hide it']").click()
        browser.find_element(By.NAME, "credential").send_keys(secret, Keys.ENTER)
        _text_in(browser, "h1", "Keys of")
        assert secret not in browser.page_source
        return secret

    root["key"] = await asyncio.to_thread(rotate_itself)
    # Revoking the root key ends its console session at the next request, and says why.
    await admin.call("POST", f"/v1/keys/{root['id']}/revoke", expect=200)

    def ended() -> None:
        browser.find_element(By.LINK_TEXT, "Webhooks").click()
        _text_in(browser, "h2", "Log in")
        _text_in(browser, "#flash", "Logged out: this key has been revoked")

    await asyncio.to_thread(ended)
    assert shown.startswith(org["key_prefix"])
    resp = await admin.client.get("/v1/keys/self", headers={"X-API-Key": shown})
    assert resp.status == 200 and (await resp.json())["name"] == "made in the console"
