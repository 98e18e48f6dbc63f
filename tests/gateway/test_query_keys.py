"""A key in the query string (400 key_in_query) or the path (400 key_in_path) is refused on
every route, whether or not a header key is sent too: it never reaches the upstream, a
response or a log line."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from gateway import keyformat
from gateway.credentials import key_in_query
from tests.admin_api.conftest import Admin
from tests.gateway.conftest import Upstream, raw_request


def _spellings(key: str) -> list[str]:
    """Query strings carrying ``key``: as a value, a name, inside a value, encoded."""
    underscores = key.replace("_", "%5F")
    return [f"api_key={key}", f"x=1&token={key}", f"{key}", f"{key}=1",
            f"auth=Bearer%20{key}", f"k={underscores}", f"k={underscores.replace('%', '%25')}",
            f"k={quote(key, safe='')}", f"filter=key:{key},other"]


async def _all_refused(port: int, key: str, code: str, cases: list[tuple[str, str]]) -> None:
    """Each (raw key, target) is refused with 400 ``code``, with and without a header key,
    saying where the key goes, and never echoing it."""
    for raw, target in cases:
        for headers in ({"X-API-Key": key}, {}):
            resp = await raw_request(port, "GET", target, headers)
            assert resp.status == 400, (target, headers, resp)
            assert f'"code":"{code}"'.encode() in resp.body
            assert b"X-API-Key header" in resp.body
            assert raw.encode() not in resp.body


async def test_a_key_in_the_query_never_reaches_the_upstream(
        gateway: TestClient, upstream: Upstream, admin: Admin, org: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = gateway.port
    assert port is not None
    key = (await admin.key(org["id"], scopes=["svc:read"]))["key"]
    other = keyformat.generate("zz_live")  # well-formed, of no organisation here
    await _all_refused(port, key, "key_in_query", [
        (raw, f"{target}?{query}") for target in ("/svc/x", "/open/x", "/maybe/x")
        for raw in (key, other) for query in _spellings(raw)])
    assert upstream.seen == []
    assert key not in caplog.text and other not in caplog.text
    assert any(r.name == "keystile.access" for r in caplog.records)


async def test_ordinary_queries_pass_unchanged(gateway: TestClient, upstream: Upstream,
                                               admin: Admin, org: dict[str, Any]) -> None:
    key = (await admin.key(org["id"], scopes=["svc:read"]))["key"]
    # 16 capitals look like an Open Dental key but are an ordinary value unless presented.
    query = "q=ABCDEFGHIJKLMNOP&key=sort&token=abc&note=ks_live_short"
    resp = await gateway.get(f"/svc/x?{query}", headers={"X-API-Key": key})
    assert resp.status == 200
    assert upstream.seen[-1]["path"] == f"/svc/x?{query}"


async def test_a_query_key_without_a_header_key_gets_the_header_hint(
        gateway: TestClient, upstream: Upstream) -> None:
    resp = await gateway.get("/svc/x?api_key=not-a-key")
    body = await resp.json()
    assert resp.status == 401 and body["error"]["code"] == "missing_key"
    assert "query string" in body["error"]["message"]
    assert "X-API-Key header" in body["error"]["message"]
    assert upstream.seen == []


def test_the_presented_key_is_recognised_in_any_style() -> None:
    customer = keyformat.generate_customer_key()
    assert key_in_query(f"a=prov/{customer}", customer)
    assert key_in_query(f"a={customer.lower()}%2F", None) is False
    assert not key_in_query(f"a={customer}", None)  # without the checksum: just a value
    assert not key_in_query("a=x", "x")  # no key is that short; the parse stage refuses it


async def test_a_key_in_the_path_never_reaches_the_upstream(
        gateway: TestClient, upstream: Upstream, admin: Admin, org: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = gateway.port
    assert port is not None
    key = (await admin.key(org["id"], scopes=["svc:read"]))["key"]
    other = keyformat.generate("zz_live")  # well-formed, of no organisation here
    await _all_refused(port, key, "key_in_path", [
        (raw, path) for target in ("/svc", "/open", "/maybe") for raw in (key, other)
        for path in (f"{target}/{raw}", f"{target}/x/{raw}/y", f"{target}/k={raw}",
                     f"{target}/{raw.replace('_', '%5F')}")])
    # The presented key, in any style, is recognised too; a key id is just an id.
    resp = await gateway.get(f"/svc/{key[-20:]}/key_0123", headers={"X-API-Key": key})
    assert resp.status == 200
    assert [seen["path"] for seen in upstream.seen] == [f"/svc/{key[-20:]}/key_0123"]
    assert key not in caplog.text and other not in caplog.text
