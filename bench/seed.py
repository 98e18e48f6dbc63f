"""Keys for the load benchmark, written straight into PostgreSQL (the admin API would work
too, but 10,000 keys through it would take longer than the benchmark itself)."""

from __future__ import annotations

from admin_api.migrate import migrate
from gateway import keyformat
from gateway.database import Connection, connect

ORG = "org_benchAAAAAAAAAAAAAAAAA"
# Every limit a key can have (issue 13's "3 windows, an owner window, an organisation window,
# a quota and a lifetime limit"), loose enough that the rotation never meets them...
WINDOWS = [{"limit": 1_000_000, "window_s": 1}, {"limit": 10_000_000, "window_s": 60},
           {"limit": 100_000_000, "window_s": 3600}]
OWNER_WINDOWS = [{"limit": 10_000_000, "window_s": 60}]
ORG_WINDOWS = [{"limit": 100_000_000, "window_s": 60}]
QUOTA = {"limit": 1_000_000_000, "period": "day"}
USAGE_LIMIT = 10**15
KEYS_PER_OWNER = 10  # owners share their window between a few keys, as customers' apps do
# ...but for a few keys whose daily quota runs out after a handful of requests.
SMALL_QUOTA = {"limit": 3, "period": "day"}


async def add_org(conn: Connection, org: str = ORG) -> None:
    await conn.execute("INSERT INTO orgs (id, name, provider_id, key_prefix, rate_limits) "
                       "VALUES ($1, 'bench', $1, 'ks', $2) ON CONFLICT DO NOTHING",
                       org, ORG_WINDOWS)


async def insert_keys(conn: Connection, count: int, quota: dict[str, object]) -> list[str]:
    """``count`` keys with the bench's scopes and limits, ``KEYS_PER_OWNER`` to an owner
    with its own rate limit; returns the raw keys."""
    return [raw for _, raw in await insert_key_rows(conn, count, quota)]


async def insert_key_rows(conn: Connection, count: int, quota: dict[str, object],
                          org: str = ORG, usage_limit: int = USAGE_LIMIT
                          ) -> list[tuple[str, str]]:
    """As ``insert_keys``, in ``org`` with ``usage_limit``; returns (key id, raw key)
    pairs."""
    raws = [keyformat.generate("ks") for _ in range(count)]
    rows = [(keyformat.new_id("key"), raw) for raw in raws]
    batch = keyformat.random_base62(8)  # owners of one call are not another call's
    owners = [f"owner-{batch}-{i // KEYS_PER_OWNER}" for i in range(count)]
    await conn.executemany(
        "INSERT INTO owner_limits (org_id, owner_id, rate_limits) VALUES ($1, $2, $3)",
        [(org, owner, OWNER_WINDOWS) for owner in sorted(set(owners))])
    await conn.executemany(
        "INSERT INTO keys (id, org_id, owner_id, prefix, key_prefix, scopes, rate_limits, "
        "quota, usage_limit) VALUES ($1, $2, $3, $4, 'ks', '{svc:read}', $5, $6, $7)",
        [(key_id, org, owner, keyformat.display_prefix(raw), WINDOWS, quota, usage_limit)
         for (key_id, raw), owner in zip(rows, owners, strict=True)])
    await conn.executemany("INSERT INTO key_secrets (hash, key_id) VALUES ($1, $2)",
                           [(keyformat.hash_key(raw), key_id) for key_id, raw in rows])
    return rows


async def seed_keys(url: str, count: int) -> tuple[list[str], list[str]]:
    """The valid keys of the rotation, and the few whose quota runs out."""
    conn = await connect(url)
    try:
        await migrate(conn)
        await add_org(conn)
        valid = await insert_keys(conn, count, QUOTA)
        exhausting = await insert_keys(conn, max(count // 1000, 2), SMALL_QUOTA)
        return valid, exhausting
    finally:
        await conn.close()
