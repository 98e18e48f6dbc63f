"""Bad input of every shape, on every route: a clear 4xx, never a 500."""

from __future__ import annotations

from typing import Any

from admin_api.routes import ROUTES
from tests.admin_api.conftest import Admin

GARBAGE: list[dict[str, Any]] = [
    {"data": b"{"},
    {"data": b"\xff\xfe\x00"},
    {"data": b"null"},
    {"data": b"[]"},
    {"data": b'"text"'},
    {"json": {"name": {"nested": True}, "scopes": "orders:read", "limit": 1e308}},
    {"json": {"usage_limit": 2**70, "grace_seconds": 1.5, "value": True}},
]


async def test_no_route_answers_500_to_garbage(admin: Admin, root: dict[str, Any]) -> None:
    for route in ROUTES:
        path = route.path.replace("{id}", root["id"]).replace("{owner_id}", "o")
        for kwargs in GARBAGE:
            resp = await admin.client.request(route.method, path + "?limit=-5&cursor=%00",
                                              headers={"Authorization":
                                                       "Bearer test-operator-token-0123456789"},
                                              **kwargs)
            assert resp.status < 500, (route.method, route.path, kwargs, resp.status)
            if resp.status >= 400:
                body = await resp.json()
                assert set(body["error"]) >= {"code", "message", "request_id"}
                assert "Traceback" not in body["error"]["message"]


async def test_unknown_route_and_wrong_method(admin: Admin) -> None:
    body = await admin.call("GET", "/v1/nothing", expect=404)
    assert body["error"]["code"] == "route_not_found"
    body = await admin.call("PUT", "/v1/keys", expect=405)
    assert body["error"]["code"] == "method_not_allowed" and "GET" in body["error"]["message"]


async def test_oversized_body_is_413(admin: Admin) -> None:
    body = await admin.call("POST", "/v1/verify", data=b"x" * (2 << 20), expect=413)
    assert body["error"]["code"] == "payload_too_large"


async def test_every_response_is_no_store_with_request_id(admin: Admin) -> None:
    for path in ("/v1/keys", "/healthz", "/v1/missing"):
        resp = await admin.client.get(path, headers={"Authorization":
                                                     "Bearer test-operator-token-0123456789"})
        assert resp.headers["Cache-Control"] == "no-store"
        assert len(resp.headers["X-Request-Id"]) >= 8


async def test_health_and_readiness(admin: Admin) -> None:
    assert (await admin.call("GET", "/healthz", headers={}, expect=200))["status"] == "ok"
    ready = await admin.call("GET", "/readyz", headers={}, expect=200)
    assert ready["checks"] == {"postgres": "ok", "redis": "ok"}


async def test_unreachable_database_is_503_not_500(aiohttp_client: Any, stores: Any) -> None:
    from admin_api.app import create_app
    from gateway.settings import AdminSettings, Settings, StoreSettings
    from keystile.embedded import free_port

    settings = Settings(database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none",
                        redis_url=stores.redis_url,
                        admin=AdminSettings(token="test-operator-token-0123456789"),
                        stores=StoreSettings(pool_min_size=0, timeout_s=1))
    client = await aiohttp_client(create_app(settings))
    malformed = "ks_live_" + "0" * 36  # its checksum is wrong
    resp = await client.get("/v1/keys", headers={"X-API-Key": malformed})
    assert resp.status == 401  # malformed keys never reach the store, so it cannot be 503
    assert (await resp.json())["error"]["code"] == "invalid_key"
    from gateway import keyformat
    resp = await client.get("/v1/keys", headers={"X-API-Key": keyformat.generate("ks_live")})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "store_unavailable"
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["postgres"].startswith("unavailable")


async def test_nul_characters_and_odd_ids_are_4xx(admin: Admin, org: dict[str, Any]) -> None:
    body = await admin.call("POST", "/v1/keys", json={"org_id": org["id"], "name": "a\u0000b",
                                                      "metadata": {"x": ["\u0000"]}}, expect=422)
    assert {f["field"] for f in body["error"]["fields"]} == {"name", "metadata"}
    body = await admin.call("GET", "/v1/keys?owner_id=a%00b", expect=422)
    assert body["error"]["fields"][0]["field"] == "owner_id"
    for path in ("/v1/keys/%00", "/v1/keys/key_%E2%98%83", "/v1/orgs/org_%00",
                 "/v1/keys/" + "k" * 5000):
        resp = await admin.client.get(path, headers={"Authorization":
                                                     "Bearer test-operator-token-0123456789"})
        assert resp.status == 404, path


async def test_undecodable_header_bytes_are_4xx(admin: Admin, root: dict[str, Any]) -> None:
    import asyncio

    port = admin.client.port
    for header in (b"X-Provider: \xff\xfe", b"Authorization: Bearer \xff\xfe"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/keys HTTP/1.1\r\nHost: x\r\nX-API-Key: " + root["key"].encode()
                     + b"\r\n" + header + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        status = int(status_line.split()[1])
        assert 400 <= status < 500, (header, status_line)
