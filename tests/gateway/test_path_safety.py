"""The scope decision is made on the exact path that is forwarded: every odd spelling of a
protected path is either refused or forwarded as exactly the path that was checked."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin
from tests.gateway.conftest import Upstream, raw_request

# /open needs no key and forwards to the upstream's /svc; /svc needs svc:read.
CASES = [
    "//svc/x", "/open/../svc/x", "/open/%2e%2e/svc/x", "/%2fsvc/x", "/svc%2f..%2fx",
    "/SVC/x", "/svc;x", "/svc%00", "\\svc\\x", "/./svc/x", "/open/..%2fsvc", "/open%2f../svc",
    "/%73vc/x", "/open/.%2e/svc/x", "/open/x/../../svc/x", "/svc/x%5c..%5c..%5copen",
    "/open/..;/svc/x", "/open/%252e%252e/svc/x", "/open/%C0%AE%C0%AE/svc/x",
    # A stray '%' and what decoding gives must never form a new escape.
    "/open/%%32%65%%32%65/svc/x", "/open/%2%65%2%65/svc/x", "/open/..%%32%66svc/x",
    "/open/%25%32%65%25%32%65/svc/x", "/open/..%3B/svc/x", "/open/%EF%BC%8E%EF%BC%8E/svc/x",
    "/open/%E2%80%A4%E2%80%A4/svc/x", "/open/..%EF%BC%8Fsvc/x", "/open/..%E2%88%95svc/x",
]


@pytest.mark.parametrize("target", CASES)
async def test_no_spelling_bypasses_the_scope_check(
        gateway: TestClient, upstream: Upstream, admin: Admin, org: dict[str, Any],
        target: str) -> None:
    port = gateway.port
    assert port is not None
    anonymous = await raw_request(port, "GET", target)
    assert anonymous.status in (400, 401, 404), (target, anonymous)
    assert upstream.seen == [], f"{target} reached the upstream without a key"

    # With a key lacking svc:read, nothing under /svc may come through either.
    key = await admin.key(org["id"], scopes=["other:read"])
    keyed = await raw_request(port, "GET", target, {"X-API-Key": key["key"]})
    assert keyed.status in (400, 401, 403, 404), (target, keyed)
    assert upstream.seen == []


async def test_forwarded_path_is_the_checked_path(gateway: TestClient, upstream: Upstream,
                                                  admin: Admin, org: dict[str, Any]) -> None:
    port = gateway.port
    assert port is not None
    key = await admin.key(org["id"], scopes=["svc:read"])
    for target, forwarded in (("//svc//a/./b/../c?q=%2F", "/svc/a/c?q=%2F"),
                              ("/%73vc/%7Eme", "/svc/~me"),
                              ("/svc/a%20b", "/svc/a%20b"),
                              ("/svc/caf%c3%a9/%21!", "/svc/caf%C3%A9/%21!")):
        resp = await raw_request(port, "GET", target, {"X-API-Key": key["key"]})
        assert resp.status == 200, (target, resp)
        assert upstream.seen[-1]["path"] == forwarded


@pytest.mark.parametrize("target", ["/svc%00", "/open/%2e%2e/svc/x", "/svc%2fx",
                                    "/open/../../x", "/svc/a\\b", "/svc/x%0d%0a",
                                    "/open/%%32%65%%32%65/svc", "/svc?a#b"])
async def test_refusals_are_400_invalid_path(gateway: TestClient, target: str) -> None:
    port = gateway.port
    assert port is not None
    resp = await raw_request(port, "GET", target)
    assert resp.status == 400, target
    assert b'"code":"invalid_path"' in resp.body, resp.body


async def test_a_target_not_starting_with_slash_is_refused_by_the_parser(
        gateway: TestClient) -> None:
    port = gateway.port
    assert port is not None
    assert (await raw_request(port, "GET", "\\svc")).status == 400
