"""The gateway end to end: what the client gets and what the upstream receives."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from tests.admin_api.conftest import Admin
from tests.gateway.conftest import Upstream, raw_request


@pytest.fixture
async def reader(admin: Admin, org: dict[str, Any]) -> dict[str, Any]:
    return await admin.key(org["id"], owner_id="clinic-7", scopes=["svc:read"])


@pytest.fixture
async def writer(admin: Admin, org: dict[str, Any]) -> dict[str, Any]:
    return await admin.key(org["id"], scopes=["svc:*"], environment="staging")


async def test_good_key_reaches_upstream_with_gateway_headers(
        gateway: TestClient, upstream: Upstream, reader: dict[str, Any]) -> None:
    resp = await gateway.get(URL("/svc/items?b=2&a=%2F1", encoded=True), headers={
        "X-API-Key": reader["key"], "X-Forwarded-For": "6.6.6.6", "Forwarded": "for=evil",
        "X-Real-IP": "6.6.6.6", "X-Keystile-Key-Id": "forged", "X-Keystile-Admin": "yes",
        "X-Request-Id": "client-req-1", "Connection": "X-Hop", "X-Hop": "drop me",
        "Keep-Alive": "timeout=1", "X-Custom": "kept"})
    assert resp.status == 200
    assert await resp.read() == b"upstream says hi"
    assert resp.headers["X-Request-Id"] == "client-req-1"
    assert resp.headers["X-Upstream"] == "1"
    for hop in ("X-Private", "Keep-Alive"):
        assert hop not in resp.headers  # dropped on the way back too

    seen = upstream.seen[-1]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert seen["path"] == "/svc/items?b=2&a=%2F1"  # the query passes unchanged
    assert "x-api-key" not in headers and reader["key"] not in str(seen)
    assert headers["x-keystile-key-id"] == reader["id"]
    assert headers["x-keystile-org-id"] == reader["org_id"]
    assert headers["x-keystile-owner-id"] == "clinic-7"
    assert headers["x-keystile-scopes"] == "svc:read"
    assert headers["x-keystile-environment"] == "production"
    assert "x-keystile-admin" not in headers
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert "forwarded" not in headers and "x-real-ip" not in headers
    assert headers["x-request-id"] == "client-req-1"
    assert "x-hop" not in headers and "keep-alive" not in headers
    assert headers["x-custom"] == "kept"


async def test_body_passes_byte_for_byte(gateway: TestClient, upstream: Upstream,
                                         writer: dict[str, Any]) -> None:
    payload = bytes(range(256)) * 100
    resp = await gateway.post("/svc/upload", data=payload, headers={"X-API-Key": writer["key"]})
    assert resp.status == 200
    assert upstream.seen[-1]["body"] == payload
    assert upstream.seen[-1]["headers"]["X-Keystile-Environment"] == "staging"


async def test_errors_per_design_table(gateway: TestClient, admin: Admin, org: dict[str, Any],
                                       reader: dict[str, Any], writer: dict[str, Any],
                                       upstream: Upstream) -> None:
    # Every request carries its own marker, so the upstream's log shows which ones reached it.
    refused: set[str] = set()

    async def expect(status: int, code: str, path: str = "/svc/x", method: str = "GET",
                     **headers: str) -> None:
        # Key changes reach the gateway through the invalidation channel: allow it 1 s.
        deadline = asyncio.get_running_loop().time() + 1.0
        while True:
            marker = uuid.uuid4().hex
            resp = await gateway.request(method, f"{path}?marker={marker}", headers=headers)
            body = await resp.json() if resp.status >= 400 else {"error": {"code": "ok"}}
            if resp.status >= 400 and code != "upstream_timeout":  # a timeout did reach it
                refused.add(marker)
            if (resp.status, body["error"]["code"]) == (status, code):
                break
            assert asyncio.get_running_loop().time() < deadline, (status, code, body)
            await asyncio.sleep(0.01)
        assert resp.headers["X-Request-Id"] == body["error"]["request_id"]

    await expect(401, "missing_key")
    await expect(401, "invalid_key", **{"X-API-Key": "nonsense"})
    await expect(403, "insufficient_scope", method="POST", **{"X-API-Key": reader["key"]})
    await expect(404, "route_not_found", path="/nowhere")
    await expect(405, "method_not_allowed", method="DELETE", **{"X-API-Key": reader["key"]})
    await expect(400, "invalid_provider", **{"X-API-Key": reader["key"], "X-Provider": "nope"})
    await admin.org("other")
    await expect(401, "invalid_key", **{"X-API-Key": reader["key"], "X-Provider": "other"})
    await expect(502, "upstream_unavailable", path="/down", **{"X-API-Key": reader["key"]})
    await expect(504, "upstream_timeout", path="/svc/slow", **{"X-API-Key": reader["key"]})
    ok = await gateway.get("/svc/x", headers={"X-API-Key": reader["key"], "X-Provider": "acme"})
    assert ok.status == 200

    await admin.call("POST", f"/v1/keys/{reader['id']}/pause", expect=200)
    await expect(403, "key_paused", **{"X-API-Key": reader["key"]})
    await admin.call("POST", f"/v1/keys/{reader['id']}/resume", expect=200)
    await admin.db.execute("UPDATE keys SET expires_at = now() WHERE id = $1", reader["id"])
    await admin.call("PATCH", f"/v1/keys/{reader['id']}", json={"name": "touch"}, expect=200)
    await expect(401, "key_expired", **{"X-API-Key": reader["key"]})
    await admin.call("POST", f"/v1/keys/{reader['id']}/revoke", expect=200)
    await expect(401, "key_revoked", **{"X-API-Key": reader["key"]})
    reached = {s["path"].partition("?marker=")[2] for s in upstream.seen}
    assert len(refused) >= 11 and not refused & reached, refused & reached
    # ...while a marker on an admitted request does get through.
    ok = await gateway.get("/svc/x?marker=admitted", headers={"X-API-Key": writer["key"]})
    assert ok.status == 200 and upstream.seen[-1]["path"] == "/svc/x?marker=admitted"


async def test_unknown_and_malformed_keys_get_the_same_body(
        gateway: TestClient, reader: dict[str, Any]) -> None:
    from gateway import keyformat

    bodies = []
    for raw in ("garbage", keyformat.generate("ks_live"), reader["key"][:-1] + "0"):
        resp = await gateway.get("/svc/x", headers={"X-API-Key": raw})
        body = await resp.json()
        body["error"].pop("request_id")
        bodies.append((resp.status, body))
    assert bodies[0] == bodies[1] == bodies[2]


async def test_fhir_and_hl7_error_formats(gateway: TestClient) -> None:
    resp = await gateway.get("/svc/x", headers={"x-response-format": "fhir"})
    assert resp.status == 401 and resp.content_type == "application/fhir+json"
    outcome = await resp.json(content_type=None)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "missing_key"
    resp = await gateway.get("/svc/x", headers={"Accept": "application/fhir+json"})
    assert (await resp.json(content_type=None))["resourceType"] == "OperationOutcome"

    resp = await gateway.get("/down/x", headers={"x-response-format": "hl7",
                                                 "X-API-Key": "bad"})
    segments = (await resp.text()).strip("\r").split("\r")
    assert [s.split("|")[0] for s in segments] == ["MSH", "MSA", "ERR"]
    assert segments[1].startswith("MSA|AR|") and "invalid_key" in segments[2]
    resp = await gateway.get("/open/x", headers={"x-response-format": "hl7"})
    assert resp.status == 200  # formats only apply to errors


async def test_auth_none_optional_and_bearer_routes(gateway: TestClient, upstream: Upstream,
                                                    reader: dict[str, Any]) -> None:
    resp = await gateway.get("/open/thing", headers={"X-API-Key": reader["key"]})
    assert resp.status == 200
    seen = upstream.seen[-1]
    assert seen["path"] == "/svc/thing"  # strip_prefix onto the upstream's base path
    assert "X-API-Key" not in seen["headers"] and "X-Keystile-Key-Id" not in seen["headers"]

    assert (await gateway.get("/maybe/x")).status == 200
    assert "X-Keystile-Key-Id" not in upstream.seen[-1]["headers"]
    assert (await gateway.get("/maybe/x", headers={"X-API-Key": "bad"})).status == 401
    resp = await gateway.get("/maybe/x", headers={"X-API-Key": reader["key"]})
    assert resp.status == 200 and upstream.seen[-1]["headers"]["X-Keystile-Key-Id"] == reader["id"]

    resp = await gateway.get("/bearer/x", headers={"Authorization": f"Bearer {reader['key']}"})
    assert resp.status == 200 and "Authorization" not in upstream.seen[-1]["headers"]
    resp = await gateway.get("/bearer/x", headers={"Authorization": f"Basic {reader['key']}"})
    assert resp.status == 401


async def test_size_limits_before_upstream(gateway: TestClient, upstream: Upstream,
                                           writer: dict[str, Any]) -> None:
    many = {f"X-H{i}": "v" for i in range(60)}
    resp = await gateway.get("/svc/x", headers={"X-API-Key": writer["key"], **many})
    assert resp.status == 431 and (await resp.json())["error"]["code"] == "headers_too_large"
    resp = await gateway.get("/svc/x", headers={"X-API-Key": writer["key"], "X-Big": "v" * 9000})
    assert resp.status == 431
    port = gateway.port
    assert port is not None
    big = await raw_request(port, "POST", "/svc/x", {"X-API-Key": writer["key"],
                                                     "Content-Length": str(400 << 20)})
    assert big.status == 413
    assert upstream.seen == []


async def test_health_and_readiness(gateway: TestClient) -> None:
    resp = await gateway.get("/healthz")
    assert resp.status == 200 and "X-Request-Id" in resp.headers
    resp = await gateway.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"] == {"postgres": "ok", "redis": "ok",
                                             "invalidations": "ok"}


async def test_methods_without_listed_scopes_are_closed(gateway: TestClient, upstream: Upstream,
                                                         writer: dict[str, Any]) -> None:
    # /svc lists scopes for GET, POST and PUT; HEAD follows GET.
    resp = await gateway.head("/svc/x", headers={"X-API-Key": writer["key"]})
    assert resp.status == 200
    # /partial takes any method but lists scopes for GET only: the others are closed.
    assert (await gateway.get("/partial/x", headers={"X-API-Key": writer["key"]})).status == 200
    for method in ("OPTIONS", "DELETE", "POST"):
        resp = await gateway.request(method, "/partial/x", headers={"X-API-Key": writer["key"]})
        assert resp.status == 403, method
        assert (await resp.json())["error"]["code"] == "insufficient_scope"
    resp = await gateway.options("/maybe/x", headers={"X-API-Key": writer["key"]})
    assert resp.status == 200  # no scopes listed: any valid key, any method
    seen_before = len(upstream.seen)
    resp = await gateway.request("PATCH", "/bearer/x",
                                 headers={"Authorization": f"Bearer {writer['key']}"})
    assert resp.status == 200  # a route without scopes needs only a valid key
    assert len(upstream.seen) == seen_before + 1


async def test_expect_100_continue_is_handled_by_the_gateway(
        gateway: TestClient, upstream: Upstream, writer: dict[str, Any]) -> None:
    resp = await gateway.post("/svc/up", data=b"hello", expect100=True,
                              headers={"X-API-Key": writer["key"]})
    assert resp.status == 200
    assert upstream.seen[-1]["body"] == b"hello"
    assert "Expect" not in upstream.seen[-1]["headers"]


async def test_spoofing_and_smuggling_headers_never_reach_the_upstream(
        gateway: TestClient, upstream: Upstream, reader: dict[str, Any],
        writer: dict[str, Any]) -> None:
    port = gateway.port
    assert port is not None
    resp = await raw_request(port, "GET", "/svc/x", {
        "X-API-Key": reader["key"], "X_Keystile_Key_Id": "key_victim",
        "X_Forwarded_For": "6.6.6.6", "X_API_KEY": writer["key"],
        "X-HTTP-Method-Override": "DELETE", "X-Original-URL": "/admin",
        "Authorization": f"Bearer {reader['key']}", "X-Other-Key": writer["key"],
        "X-Fine": "kept"})
    assert resp.status == 200
    headers = {k.lower(): v for k, v in upstream.seen[-1]["headers"].items()}
    assert not any("_" in name for name in headers)
    assert "x-http-method-override" not in headers and "x-original-url" not in headers
    assert "authorization" not in headers and "x-other-key" not in headers
    assert reader["key"] not in str(headers) and writer["key"] not in str(headers)
    assert headers["x-keystile-key-id"] == reader["id"] and headers["x-fine"] == "kept"

    # On a route without auth, a key a client sends along is not passed on either.
    await gateway.get("/open/x", headers={"X-API-Key": reader["key"],
                                          "Authorization": "Bearer upstream-token"})
    headers = {k.lower(): v for k, v in upstream.seen[-1]["headers"].items()}
    assert "x-api-key" not in headers and headers["authorization"] == "Bearer upstream-token"


async def test_refused_requests_get_no_100_continue(gateway: TestClient,
                                                    upstream: Upstream) -> None:
    port = gateway.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /svc/x HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 401"), status_line
    assert upstream.seen == []


async def test_a_malformed_header_line_never_logs_the_key(
        gateway: TestClient, reader: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    port = gateway.port
    assert port is not None
    conn_reader, conn_writer = await asyncio.open_connection("127.0.0.1", port)
    conn_writer.write(b"GET /svc/x HTTP/1.1\r\nHost: g\r\nX-API-Key : " + reader["key"].encode()
                      + b"\r\n\r\n")
    await conn_writer.drain()
    status_line = await conn_reader.readline()
    conn_writer.close()
    assert status_line.split()[1] == b"400"
    assert reader["key"] not in caplog.text
    assert "refused a malformed HTTP request" in caplog.text


async def test_forwarding_headers_from_a_trusted_proxy_are_kept(
        aiohttp_client: Any, gateway_settings: Any, upstream: Upstream, admin: Admin,
        org: dict[str, Any]) -> None:
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from gateway.state import LISTENING

    gateway = GatewaySettings.model_validate({**gateway_settings.gateway.model_dump(),
                                              "trusted_proxies": ["127.0.0.0/8"]})
    settings = gateway_settings.model_copy(update={"gateway": gateway})
    app = create_app(settings)
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[LISTENING].wait(), 10)
    key = await admin.key(org["id"], scopes=["svc:read"])
    resp = await client.get("/svc/x", headers={
        "X-API-Key": key["key"], "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"})
    assert resp.status == 200
    headers = upstream.seen[-1]["headers"]
    assert headers["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == "api.example.com"
