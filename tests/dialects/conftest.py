"""The admin API with dialects enabled, and a gateway routing each dialect's client
convention to a recording upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from admin_api.app import create_app as create_admin
from gateway.app import create_app as create_gateway
from gateway.settings import AdminSettings, DialectOptions, RouteSettings, Settings
from gateway.state import LISTENING
from tests.admin_api.conftest import OPERATOR_TOKEN, Admin
from tests.conftest import Stores
from tests.gateway.conftest import Upstream, upstream  # noqa: F401

DIALECTS = ["scrubs", "scrubbe", "nuxera", "opendental", "regen"]
ENCRYPTION_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 bytes
JWT_SECRET = "test-nuxera-jwt-secret-0123456789abcdef"


@pytest.fixture
def dialect_settings(stores: Stores, upstream: Upstream) -> Settings:  # noqa: F811
    return Settings(
        database_url=stores.database_url, redis_url=stores.redis_url,
        admin=AdminSettings(token=OPERATOR_TOKEN), dialects=DIALECTS,  # type: ignore[arg-type]
        dialect={"nuxera": DialectOptions(jwt_secret=JWT_SECRET)},
        encryption_key=ENCRYPTION_KEY,
        routes=[RouteSettings(prefix=f"/{name}", upstream=upstream.url, credentials=name)
                for name in DIALECTS])


@pytest.fixture
async def dialect_admin(aiohttp_client: Callable[..., Awaitable[TestClient]],
                        dialect_settings: Settings, db: Any) -> Admin:
    return Admin(await aiohttp_client(create_admin(dialect_settings)), db)


@pytest.fixture
async def dialect_gateway(aiohttp_client: Callable[..., Awaitable[TestClient]],
                          dialect_settings: Settings) -> TestClient:
    app = create_gateway(dialect_settings)
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[LISTENING].wait(), 10)
    return client


@pytest.fixture
async def tenant(dialect_admin: Admin) -> dict[str, Any]:
    """An organisation with a root key holding every scope."""
    org = await dialect_admin.org("tenant", key_prefix="rg")
    root = await dialect_admin.key(org["id"], root=True, scopes=["*"], name="root")
    return {"org": org, "root": root}
