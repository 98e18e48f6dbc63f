"""Keys for the load benchmark, written straight into PostgreSQL (the admin API would work
too, but 10,000 keys through it would take longer than the benchmark itself)."""

from __future__ import annotations

from admin_api.migrate import migrate
from gateway import keyformat
from gateway.database import Connection, connect

ORG = "org_benchAAAAAAAAAAAAAAAAA"
# Three windows and a quota on every key, loose enough that the rotation never meets them...
WINDOWS = [{"limit": 1_000_000, "window_s": 1}, {"limit": 10_000_000, "window_s": 60},
           {"limit": 100_000_000, "window_s": 3600}]
QUOTA = {"limit": 1_000_000_000, "period": "day"}
# ...but for a few keys whose daily quota runs out after a handful of requests.
SMALL_QUOTA = {"limit": 3, "period": "day"}


async def add_org(conn: Connection) -> None:
    await conn.execute("INSERT INTO orgs (id, name, provider_id, key_prefix) "
                       "VALUES ($1, 'bench', 'bench', 'ks') ON CONFLICT DO NOTHING", ORG)


async def insert_keys(conn: Connection, count: int, quota: dict[str, object]) -> list[str]:
    """``count`` keys with the bench's scopes and limits; returns the raw keys."""
    raws = [keyformat.generate("ks") for _ in range(count)]
    rows = [(keyformat.new_id("key"), raw) for raw in raws]
    await conn.executemany(
        "INSERT INTO keys (id, org_id, prefix, key_prefix, scopes, rate_limits, quota) "
        "VALUES ($1, $2, $3, 'ks', '{svc:read}', $4, $5)",
        [(key_id, ORG, keyformat.display_prefix(raw), WINDOWS, quota) for key_id, raw in rows])
    await conn.executemany("INSERT INTO key_secrets (hash, key_id) VALUES ($1, $2)",
                           [(keyformat.hash_key(raw), key_id) for key_id, raw in rows])
    return raws


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
