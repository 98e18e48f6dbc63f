"""Every dialect answers every error in its own shape — ``{"error": message, "request_id"}``
(Open Dental's message led by its status word, Nuxera's also in FHIR / HL7 on request) —
including the errors no dialect handler raises itself: unknown paths, 405, 413 and 503."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import jwt
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from admin_api.app import create_app
from gateway import keyformat
from gateway.settings import AdminSettings, DialectOptions, Settings, StoreSettings
from keystile.embedded import free_port
from tests.admin_api.conftest import OPERATOR_TOKEN, Admin
from tests.conftest import Stores
from tests.dialects.conftest import DIALECTS, ENCRYPTION_KEY, JWT_SECRET

TOO_LARGE = b"{" + b" " * (1 << 20) + b"}"  # over the default request_body_limit (1 MiB)
BAD_JSON = b'{"name": '


@dataclass
class Case:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None
    json: Any = None
    says: str = ""  # a part of the message, when the case is about what it says
    never_says: tuple[str, ...] = field(default=())


def nuxera_token(user: str | int = "77") -> dict[str, str]:
    payload = {"sub": user, "org": "tenant", "exp": int(time.time()) + 600}
    return {"Authorization": f"Bearer {jwt.encode(payload, JWT_SECRET, algorithm='HS256')}"}


def scrubs_creds(raw: str) -> dict[str, str]:
    return {"X-Scrubs-Clinic-Api-Key": raw, "X-Scrubs-Clinic-Provider": "tenant"}


async def scrubs(admin: Admin, tenant: dict[str, Any]) -> dict[str, Case]:
    root = scrubs_creds(tenant["root"]["key"])
    path = "/api/v1/api-key"
    clinic = await admin.call("POST", path, headers=root,
                              json={"clinic_id": "C9", "friendly_name": "c"}, expect=201)
    return {
        "400 bad JSON": Case("POST", path, root, BAD_JSON, says="not valid JSON"),
        "401": Case("GET", path, {}),
        "403": Case("POST", path, scrubs_creds(clinic["apiKey"]),
                    json={"clinic_id": "D", "friendly_name": "d"}),
        "404": Case("DELETE", f"{path}?id=key_missing", root),
        "404 route": Case("GET", f"{path}/nothing-here", root),
        "405": Case("PATCH", path, root),
        "409": Case("POST", path, root, json={"clinic_id": "C9", "friendly_name": "again"}),
        "413": Case("POST", path, root, TOO_LARGE),
        "400 validation": Case("POST", path, root, json={
            "clinic_id": "E", "friendly_name": "e", "usage_limit": 10.5},
            says="usage_limit: must be a whole number"),
    }


async def scrubbe(admin: Admin, tenant: dict[str, Any]) -> dict[str, Case]:
    root = {"Authorization": f"Bearer {tenant['root']['key']}"}
    sub = await admin.key(tenant["org"]["id"], scopes=["incidents:read"])
    revoked = await admin.key(tenant["org"]["id"], scopes=["incidents:read"])
    await admin.call("POST", f"/v1/keys/{revoked['id']}/revoke", expect=200)
    create = "/api/v1/apikey/createapikey"
    spec = {"name": "k", "environment": "PRODUCTION", "scopes": ["incidents:read"]}
    return {
        "400 bad JSON": Case("POST", create, root, BAD_JSON, says="not valid JSON"),
        "401": Case("GET", "/api/v1/apikey/apikeys", {}),
        "403": Case("GET", "/api/v1/apikey/apikeys", {"Authorization": f"Bearer {sub['key']}"}),
        "404": Case("DELETE", "/api/v1/apikey/key_AAAAAAAAAAAAAAAAAAAAAA", root),
        "404 route": Case("GET", "/api/v1/apikey/x/unknown", root),
        "405": Case("GET", create, root),
        "409": Case("POST", f"/api/v1/apikey/{revoked['id']}/rotate", root),
        "413": Case("POST", create, root, TOO_LARGE),
        "400 validation": Case("POST", create, root, json={
            **spec, "expiresAt": "2020-01-01T00:00:00Z"}, says="expiresAt",
            never_says=("expires_at",)),
    }


async def nuxera(admin: Admin, tenant: dict[str, Any]) -> dict[str, Case]:
    me = nuxera_token()
    base = "/api/apiKeys"
    expired = await admin.call("POST", base, headers=me, json={
        "name": "old", "type": "t2yd", "status": "expired"}, expect=201)
    busy = nuxera_token("78")
    for _ in range(100):  # the management limit: 100 a minute per user
        await admin.call("GET", base, headers=busy, expect=200)
    return {
        "400 bad JSON": Case("POST", base, me, BAD_JSON),
        "401": Case("GET", base, {}),
        # Nuxera never answers 403: a user reaches only their own keys (404 otherwise).
        "404": Case("GET", f"{base}/999999", me),
        "404 route": Case("GET", f"{base}/1/unknown", me),
        "405": Case("DELETE", base, me),
        "409": Case("PATCH", f"{base}/{expired['id']}/resume", me, says="expired"),
        "413": Case("POST", base, me, TOO_LARGE),
        "400 validation": Case("POST", base, me, json={"name": "x"}),
        "429": Case("GET", base, busy),
    }


async def opendental(admin: Admin, tenant: dict[str, Any]) -> dict[str, Case]:
    auth = {"Authorization": f"ODFHIR tenant/{tenant['root']['key']}"}
    return {
        "400 bad JSON": Case("PUT", "/apikeys", auth, BAD_JSON, says="not valid JSON"),
        "401": Case("GET", "/apikeys", {}),
        # Open Dental documents 400, 401 and 404 only: a key that is not a root key is 401,
        # and no Open Dental request conflicts with a key's state.
        "404": Case("PUT", "/apikeys", auth, json={"CustomerKey": "AAAAAAAAAAAAAAAA"}),
        "404 route": Case("GET", "/apikeys/unknown", auth),
        "405": Case("DELETE", "/apikeys", auth),
        "413": Case("PUT", "/apikeys", auth, TOO_LARGE),
        "400 validation": Case("PUT", "/apikeys", auth, json={"CustomerKey": "lowercase"}),
    }


async def regen(admin: Admin, tenant: dict[str, Any]) -> dict[str, Case]:
    root = {"X-API-Key": tenant["root"]["key"]}
    sub = await admin.key(tenant["org"]["id"], scopes=["orders:read"])
    revoked = await admin.key(tenant["org"]["id"], scopes=["orders:read"])
    await admin.call("POST", f"/v1/keys/{revoked['id']}/revoke", expect=200)
    base = "/api/v1/api-keys"
    return {
        "400 bad JSON": Case("POST", base, root, BAD_JSON, says="not valid JSON"),
        "401": Case("GET", base, {}),
        "403": Case("GET", base, {"X-API-Key": sub["key"]}),
        "404": Case("GET", f"{base}/key_AAAAAAAAAAAAAAAAAAAAAA", root),
        "404 route": Case("GET", f"{base}/x/y/z", root),
        "405": Case("PATCH", base, root),
        "409": Case("POST", f"{base}/{revoked['id']}/rotate", root),
        "413": Case("POST", base, root, TOO_LARGE),
        # The seed's own example: its expiresAt (2025-01-20) is past.
        "400 validation": Case("POST", base, root, json={
            "name": "Production Integration",
            "scopes": ["orders:read", "orders:write", "products:read", "inventory:read"],
            "expiresAt": "2025-01-20T00:00:00Z"}, says="expiresAt: must be in the future",
            never_says=("expires_at",)),
    }


CASES: dict[str, Callable[[Admin, dict[str, Any]], Awaitable[dict[str, Case]]]] = {
    "scrubs": scrubs, "scrubbe": scrubbe, "nuxera": nuxera, "opendental": opendental,
    "regen": regen}


async def send(client: TestClient, case: Case, headers: dict[str, str] | None = None
               ) -> ClientResponse:
    return await client.request(case.method, case.path, headers={**case.headers,
                                                                 **(headers or {})},
                                data=case.body, json=case.json)


async def assert_shape(dialect: str, resp: ClientResponse, status: int, case: Case) -> None:
    """The dialect's shape: exactly ``error`` and ``request_id``, the id also in the header."""
    body = await resp.json()
    assert resp.status == status, (resp.status, body)
    assert resp.content_type == "application/json"
    assert set(body) == {"error", "request_id"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert body["request_id"] == resp.headers["X-Request-Id"]
    assert resp.headers["Cache-Control"] == "no-store"
    if dialect == "opendental":  # the seed's "400 BadRequest (with explanation)"
        word = HTTPStatus(status).phrase.replace(" ", "")
        assert re.match(rf"{word}: \S", body["error"]), body
    assert case.says in body["error"], body
    for word in case.never_says:
        assert word not in body["error"], body


def expected_status(label: str) -> int:
    return int(label.split()[0])


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_every_error_in_the_dialects_shape(dialect: str, dialect_admin: Admin,
                                                 tenant: dict[str, Any]) -> None:
    cases = await CASES[dialect](dialect_admin, tenant)
    for label, case in cases.items():
        status = expected_status(label)
        resp = await send(dialect_admin.client, case)
        await assert_shape(dialect, resp, status, case)
        if status == 405:
            assert case.method not in resp.headers["Allow"] and resp.headers["Allow"]
        if status == 429:
            assert int(resp.headers["Retry-After"]) > 0
        if dialect == "nuxera":  # the same error in FHIR, carrying the same kind of id
            resp = await send(dialect_admin.client, case, {"x-response-format": "fhir"})
            outcome = await resp.json(content_type=None)
            assert resp.status == status and outcome["resourceType"] == "OperationOutcome"
            assert outcome["issue"][0]["diagnostics"] == (
                f"request_id={resp.headers['X-Request-Id']}")


@pytest.fixture
def unreachable_database(stores: Stores) -> Settings:
    """Dialect settings whose PostgreSQL is a port nobody listens on."""
    return Settings(
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        redis_url=stores.redis_url, admin=AdminSettings(token=OPERATOR_TOKEN),
        dialects=DIALECTS,  # type: ignore[arg-type]
        dialect={"nuxera": DialectOptions(jwt_secret=JWT_SECRET)},
        encryption_key=ENCRYPTION_KEY, stores=StoreSettings(pool_min_size=0, timeout_s=1))


async def test_store_unavailable_is_503_in_every_dialects_shape(
        aiohttp_client: Callable[..., Awaitable[TestClient]],
        unreachable_database: Settings) -> None:
    client = await aiohttp_client(create_app(unreachable_database))
    key = keyformat.generate("ks_live")  # well-formed, so it is looked up in the store
    cases = {
        "scrubs": Case("GET", "/api/v1/api-key", scrubs_creds(key)),
        "scrubbe": Case("GET", "/api/v1/apikey/apikeys", {"Authorization": f"Bearer {key}"}),
        "nuxera": Case("GET", "/api/apiKeys", nuxera_token()),
        "opendental": Case("GET", "/apikeys", {"Authorization": f"ODFHIR tenant/{key}"}),
        "regen": Case("GET", "/api/v1/api-keys", {"X-API-Key": key}),
    }
    assert set(cases) == set(DIALECTS)
    for dialect, case in cases.items():
        await assert_shape(dialect, await send(client, case), 503, case)
    # Outside every dialect's paths, errors keep the canonical shape.
    resp = await client.get("/v1/keys", headers={"X-API-Key": key})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "store_unavailable"
