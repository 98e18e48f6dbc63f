"""A headless Chromium for tests that drive web pages: Debian's chromium and chromedriver as
bench/tools.py unpacks them, one browser for the whole run, reset before each test; PNG
screenshots into tests/browser/.screenshots/; axe-core's accessibility violations; and the
admin API and gateway fixtures the console's tests drive.

Selenium's calls block: a test serving its pages from the event loop runs its browser steps
in a plain function through ``asyncio.to_thread`` so the loop can answer them."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from bench import tools
from tests.admin_api.conftest import admin, org, root, settings  # noqa: F401
from tests.gateway.conftest import gateway, gateway_settings, upstream  # noqa: F401

SCREENSHOTS = Path(__file__).parent / ".screenshots"
DESKTOP = (1280, 800)
PHONE = (390, 844)
# As root, in a container: no sandbox (it needs user namespaces), no GPU, and /tmp instead of
# a /dev/shm that may hold only 64 MB.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
# Runs axe on the whole document and hands its violations back (or the error, as a string).
RUN_AXE = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ["violations"]})
  .then(result => done(result.violations), error => done(String(error)));
"""


@pytest.fixture(scope="session")
def chromium() -> Iterator[WebDriver]:
    """One headless Chromium for the session, quit (chromedriver and every chromium process
    with it) at the end."""
    if not tools.available():
        pytest.skip("the browser tests need apt-get and dpkg to unpack Debian's chromium "
                    "and chromium-driver packages")
    try:
        browser = tools.chromium()
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        pytest.fail(f"Debian's chromium could not be unpacked into bench/.tools: {exc}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser.binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    service = Service(executable_path=browser.driver, env=browser.env)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: WebDriver) -> WebDriver:
    """The session's browser on a blank page at desktop size, without the cookies an earlier
    test left."""
    chromium.get("about:blank")
    # Every site's cookies: delete_all_cookies() only clears the current page's, and cookies
    # do not tell ports apart, so one test's session would log the next one in.
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    resize(chromium, DESKTOP)
    return chromium


def resize(driver: WebDriver, size: tuple[int, int]) -> None:
    """Makes the page's viewport ``size`` (width, height) in CSS pixels. Headless Chromium
    still counts a window frame (its height differs between versions) into the window's
    size, so the window is made larger by what the frame takes."""
    width, height = size
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    if inner != [width, height]:
        driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])


def screenshot(driver: WebDriver, name: str) -> Path:
    """Writes what the viewport shows to tests/browser/.screenshots/<name>.png."""
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"screenshot name {name!r}: use letters, digits, '_', '-' and '.'")
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"chromium wrote no screenshot to {path}")
    return path


@cache
def _axe_script() -> str:
    return tools.axe_core().read_text("utf-8")


def axe_violations(driver: WebDriver, impact: tuple[str, ...] = ("serious", "critical")
                   ) -> list[dict[str, Any]]:
    """axe-core's violations on the page the driver shows, those of the given impacts; each
    has axe's ``id``, ``impact``, ``help``, ``helpUrl`` and the offending ``nodes``."""
    if not driver.execute_script("return typeof window.axe === 'object';"):
        driver.execute_script(_axe_script())
    found = driver.execute_async_script(RUN_AXE)
    if not isinstance(found, list):
        raise RuntimeError(f"axe.run failed in the page: {found}")
    return [violation for violation in found if violation["impact"] in impact]
