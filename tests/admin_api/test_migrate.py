from __future__ import annotations

import asyncpg
import pytest

from admin_api.migrate import MigrationError, available, migrate


async def test_schema_is_current_and_migrate_is_idempotent(db: asyncpg.Connection) -> None:
    versions = [r["version"] for r in await db.fetch(
        "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in available()]
    assert await migrate(db) == []
    tables = {r["tablename"] for r in await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"orgs", "keys", "key_secrets", "audit_log", "key_usage_daily"} <= tables
    # Dialects whose documented ids are integers use the numeric serial.
    assert await db.fetchval(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = 'keys' AND column_name = 'serial'") == "bigint"


async def test_a_newer_database_is_refused(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')")
    try:
        with pytest.raises(MigrationError, match="9999"):
            await migrate(db)
    finally:
        await db.execute("DELETE FROM schema_migrations WHERE version = 9999")
