"""PostgreSQL going away under the admin API's pool — a primary stopped or restarted, its
backends terminated — is a 503 ``store_unavailable``, never a 500. ``keystile
cluster-check`` found the 500: a pooled connection that had read the server's goodbye
(57P01) but not yet its closed socket refused the next query with asyncpg's
InternalClientError ("cannot switch to state 12; another operation (2) is in progress")."""

from __future__ import annotations

from collections import Counter
from typing import Any

from admin_api.app import create_app
from gateway.database import connect
from gateway.settings import AdminSettings, Settings, StoreSettings
from tests.admin_api.conftest import OPERATOR, OPERATOR_TOKEN
from tests.conftest import Stores

APPLICATION = "keystile-admin-goodbye-test"  # names this test's pool in pg_stat_activity
ROUNDS = 40  # the goodbye and the closed socket race: each round lands on one side or other


async def test_terminated_pool_connections_are_503_not_500(aiohttp_client: Any,
                                                            stores: Stores) -> None:
    settings = Settings(database_url=f"{stores.database_url}?application_name={APPLICATION}",
                        redis_url=stores.redis_url, admin=AdminSettings(token=OPERATOR_TOKEN),
                        stores=StoreSettings(pool_min_size=1, pool_max_size=1))
    client = await aiohttp_client(create_app(settings))
    killer = await connect(stores.database_url)
    answers: Counter[tuple[int, str]] = Counter()
    try:
        for _ in range(ROUNDS):
            resp = await client.get("/v1/keys?limit=1", headers=OPERATOR)
            assert resp.status == 200  # the pool's one connection is open and idle again
            terminated = await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1", APPLICATION)
            assert terminated == 1
            resp = await client.get("/v1/keys?limit=1", headers=OPERATOR)
            body = await resp.json()
            answers[(resp.status, body.get("error", {}).get("code", ""))] += 1
    finally:
        await killer.close()
    assert set(answers) <= {(200, ""), (503, "store_unavailable")}, answers
    assert answers[(503, "store_unavailable")] > 0, answers  # the goodbye was met
