"""Applies the numbered SQL files of ``admin_api/migrations`` in order, each in its own
transaction, under an advisory lock so concurrent runners cannot race."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from gateway.database import Connection

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x6B657973  # "keys"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


class MigrationError(Exception):
    """The database schema cannot be brought to this version of Keystile."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in resources.files("admin_api.migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    return found


async def migrate(conn: Connection) -> list[Migration]:
    """Brings the schema up to date; returns the migrations it applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(CREATE_TABLE)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        known = available()
        unknown = done - {m.version for m in known}
        if unknown:
            raise MigrationError(
                f"the database has migration(s) {sorted(unknown)} that this Keystile does not "
                "know; upgrade Keystile (migrations are forward-only)"
            )
        applied = []
        for migration in known:
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
