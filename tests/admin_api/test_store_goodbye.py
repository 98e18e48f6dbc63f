"""PostgreSQL going away under the admin API's pool — a primary stopped or restarted, its
backends terminated — is a 503 ``store_unavailable``, never a 500. ``keystile
cluster-check`` found the 500: a pooled connection that had read the server's goodbye
(57P01) but not yet its closed socket refused the next query with asyncpg's
InternalClientError ("cannot switch to state 12; another operation (2) is in progress"), and
the same error killed the admin API's outbox drainer (this test's teardown then failed)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web

from admin_api.app import create_app
from admin_api.errors import error_middleware
from gateway.settings import AdminSettings, Settings, StoreSettings
from tests.admin_api.conftest import OPERATOR, OPERATOR_TOKEN
from tests.conftest import Stores

APPLICATION = "keystile-admin-goodbye-test"  # names this test's pool in pg_stat_activity
ROUNDS = 40  # the goodbye and the closed socket race: each round lands on one side or other


async def test_terminated_pool_connections_are_503_not_500(
        aiohttp_client: Any, stores: Stores, db: asyncpg.Connection) -> None:
    """Listing keys (a plain query) and creating them (a transaction) on a connection the
    server has just terminated."""
    settings = Settings(database_url=f"{stores.database_url}?application_name={APPLICATION}",
                        redis_url=stores.redis_url, admin=AdminSettings(token=OPERATOR_TOKEN),
                        stores=StoreSettings(pool_min_size=1, pool_max_size=1))
    client = await aiohttp_client(create_app(settings))
    org = await (await client.post("/v1/orgs", headers=OPERATOR,
                                   json={"name": "goodbye", "provider_id": "goodbye"})).json()
    answers: Counter[tuple[str, int, str]] = Counter()
    for i in range(2 * ROUNDS):
        resp = await client.get("/v1/keys?limit=1", headers=OPERATOR)
        assert resp.status == 200  # the pool's one connection is open and idle again
        terminated = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1", APPLICATION)
        assert terminated == 1
        if i % 2:
            resp = await client.post("/v1/keys", headers=OPERATOR, json={"org_id": org["id"]})
        else:
            resp = await client.get("/v1/keys?limit=1", headers=OPERATOR)
        body = await resp.json()
        answers[(resp.method, resp.status, body.get("error", {}).get("code", ""))] += 1
    assert {(s, c) for _, s, c in answers} <= {(200, ""), (201, ""),
                                               (503, "store_unavailable")}, answers
    for method in ("GET", "POST"):  # the goodbye was met on both paths
        assert answers[(method, 503, "store_unavailable")] > 0, answers


async def _raised(aiohttp_client: Any, error: Exception) -> ClientResponse:
    """The answer to a request whose handler raises ``error``, through the error middleware."""
    async def handler(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/v1/keys", handler)
    client = await aiohttp_client(app)
    return await client.get("/v1/keys")


GOODBYES = [
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CrashShutdownError("terminating connection because of crash of another process"),
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in "
                                "progress"),
    asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection "
                           "is closed"),
]


@pytest.mark.parametrize("error", GOODBYES, ids=lambda e: type(e).__name__)
async def test_every_shape_of_goodbye_is_503(aiohttp_client: Any, error: Exception) -> None:
    """What asyncpg raises as the server goes (the race above reaches each of them only
    sometimes — the closed transaction was met by cluster-check), through the admin API's
    error middleware."""
    resp = await _raised(aiohttp_client, error)
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "store_unavailable"
    assert "PostgreSQL is unavailable" in body["error"]["message"]


MISTAKES = [
    (asyncpg.exceptions._base.DataError("invalid input for query argument $1: 'x'"), 422,
     "invalid_value"),
    (asyncpg.ClientConfigurationError("bad option"), 500, "internal_error"),
    (asyncpg.UnsupportedServerFeatureError("no such feature"), 500, "internal_error"),
]


@pytest.mark.parametrize(("error", "status", "code"), MISTAKES,
                         ids=lambda e: type(e).__name__ if isinstance(e, Exception) else "")
async def test_asyncpg_telling_of_our_own_mistake_is_not_retry_later(
        aiohttp_client: Any, error: Exception, status: int, code: str) -> None:
    """Other InterfaceErrors are asyncpg refusing what the code asked, not a store gone:
    never 503 "retry later"."""
    resp = await _raised(aiohttp_client, error)
    assert (resp.status, (await resp.json())["error"]["code"]) == (status, code)
