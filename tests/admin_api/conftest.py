"""An admin API client against the real stores, with helpers for common set-up."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from admin_api.accesslog import AccessLogger
from admin_api.app import create_app
from gateway.settings import AdminSettings, Settings
from tests.conftest import Stores

OPERATOR_TOKEN = "test-operator-token-0123456789"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def as_key(raw: str, provider: str | None = None) -> dict[str, str]:
    headers = {"X-API-Key": raw}
    if provider is not None:
        headers["X-Provider"] = provider
    return headers


@dataclass
class Admin:
    """The client plus helpers that create organisations and keys through the API."""

    client: TestClient
    db: asyncpg.Connection

    async def call(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                   expect: int | None = None, **kwargs: Any) -> Any:
        resp = await self.client.request(method, path, headers=OPERATOR if headers is None
                                         else headers, **kwargs)
        body = await resp.json() if resp.content_type == "application/json" else None
        if expect is not None:
            assert resp.status == expect, (resp.status, body)
        return body

    async def org(self, provider_id: str = "acme", **fields: Any) -> dict[str, Any]:
        payload = {"name": f"{provider_id} inc", "provider_id": provider_id, **fields}
        return await self.call("POST", "/v1/orgs", json=payload, expect=201)

    async def key(self, org_id: str | None = None, *, headers: dict[str, str] | None = None,
                  **fields: Any) -> dict[str, Any]:
        payload = dict(fields)
        if org_id is not None:
            payload["org_id"] = org_id
        return await self.call("POST", "/v1/keys", json=payload, headers=headers, expect=201)


@pytest.fixture
def settings(stores: Stores) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                    admin=AdminSettings(token=OPERATOR_TOKEN))


@pytest.fixture
async def admin(aiohttp_client: Callable[..., Awaitable[TestClient]], settings: Settings,
                db: asyncpg.Connection) -> Admin:
    server = TestServer(create_app(settings))
    await server.start_server(access_log_class=AccessLogger,
                              access_log=logging.getLogger("keystile.access"))
    client = await aiohttp_client(server)
    return Admin(client, db)


@pytest.fixture
async def org(admin: Admin) -> dict[str, Any]:
    return await admin.org("acme")


@pytest.fixture
async def root(admin: Admin, org: dict[str, Any]) -> dict[str, Any]:
    """A root key of ``org`` with every scope."""
    return await admin.key(org["id"], root=True, name="root", scopes=["*"], owner_id="ops")
