"""The browser tooling itself: Chromium shows a page an aiohttp server serves, at desktop and
phone sizes, writes screenshots of it, and axe-core finds an input without a label."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import DESKTOP, PHONE, axe_violations, resize, screenshot

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def page(field: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Keys</title>
<style>@media (max-width: 600px) {{ #wide {{ display: none; }} }}</style></head>
<body><main><h1 id="title">API keys</h1><p id="wide">Shown on wide screens</p>
{field}</main></body></html>"""


LABELLED = page('<label for="name">Key name</label> <input id="name" type="text">')
UNLABELLED = page('<input id="name" type="text">')


async def serve(aiohttp_server: ServerFactory) -> TestServer:
    async def labelled(request: web.Request) -> web.Response:
        return web.Response(text=LABELLED, content_type="text/html")

    async def unlabelled(request: web.Request) -> web.Response:
        return web.Response(text=UNLABELLED, content_type="text/html")

    app = web.Application()
    app.router.add_get("/labelled", labelled)
    app.router.add_get("/unlabelled", unlabelled)
    return await aiohttp_server(app)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def look(driver: WebDriver, url: str, size: tuple[int, int], name: str
         ) -> tuple[str, bool, tuple[int, int]]:
    """The heading's text, whether the wide-screen paragraph shows, and the screenshot's
    pixel size, with the page at ``size``."""
    resize(driver, size)
    driver.get(url)
    title = driver.find_element(By.ID, "title").text
    wide = driver.find_element(By.ID, "wide").is_displayed()
    return title, wide, png_size(screenshot(driver, name))


async def test_a_page_renders_at_desktop_and_phone_sizes(
        browser: WebDriver, aiohttp_server: ServerFactory) -> None:
    server = await serve(aiohttp_server)
    url = str(server.make_url("/labelled"))

    desktop = await asyncio.to_thread(look, browser, url, DESKTOP, "tooling-desktop")
    phone = await asyncio.to_thread(look, browser, url, PHONE, "tooling-phone")

    assert desktop == ("API keys", True, DESKTOP)
    assert phone == ("API keys", False, PHONE)


def violations_at(driver: WebDriver, url: str) -> list[str]:
    driver.get(url)
    return sorted(violation["id"] for violation in axe_violations(driver))


async def test_axe_reports_an_input_without_a_label(
        browser: WebDriver, aiohttp_server: ServerFactory) -> None:
    server = await serve(aiohttp_server)

    unlabelled = await asyncio.to_thread(
        violations_at, browser, str(server.make_url("/unlabelled")))
    labelled = await asyncio.to_thread(
        violations_at, browser, str(server.make_url("/labelled")))

    assert unlabelled == ["label"]
    assert labelled == []
