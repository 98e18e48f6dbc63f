"""Reading keys from a streaming replica without trusting it past what it has replayed.

A replica applies the primary's changes a little later than they commit. A gateway that read
a key from it right after a revocation could cache the key as still active — and share it
through Redis. So every announced change carries the primary's WAL position once the change
had committed (``pg_current_wal_insert_lsn()``, read by the admin API as it announces), kept
in the invalidation message and beside each changed secret's generation in Redis; a worker
also reads the primary's position whenever it (re)subscribes to the channel. A lookup reads
the replica only once the replica has replayed at least the position of every change the
lookup knows of; otherwise it reads the primary.

The check runs as its own statement before the lookup, on the same connection: the lookup's
snapshot, taken after it, then holds everything the check saw replayed (a check inside the
lookup's own statement would be evaluated after its snapshot, and could pass on changes the
snapshot does not hold)."""

from __future__ import annotations

from typing import Any

import asyncpg

# True on a replica that has replayed ``$1``; on a server not in recovery (a primary given
# as database_read_url) there is no replay position and nothing to wait for.
REPLAYED = "SELECT COALESCE(pg_last_wal_replay_lsn() >= $1::pg_lsn, true)"
# On the primary, after the change committed: the insert position, at or past the end of
# every record written so far — the commit's included. (pg_current_wal_lsn(), the *write*
# position, can still be short of a commit with synchronous_commit = off.) asyncpg reads and
# writes pg_lsn as an int.
CURRENT = "SELECT pg_current_wal_insert_lsn()"


class Stale(Exception):
    """The replica has not yet replayed a change the lookup knows of."""


def encode(value: int) -> str:
    """As kept in Redis and invalidation messages: 16 hex digits, so that positions compare
    as strings (in Lua too); "" for none."""
    return f"{value:016X}" if value else ""


def decode(value: str | bytes | None) -> int:
    """``encode``'s inverse; 0 (nothing required) for anything else."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or not value:
        return 0
    try:
        return int(value, 16)
    except ValueError:
        return 0


async def fetchrow(replica: asyncpg.Pool, required: int, query: str, *args: Any
                   ) -> asyncpg.Record | None:
    """``query``'s row from the replica, once it has replayed position ``required``; raises
    ``Stale`` when it has not."""
    async with replica.acquire() as conn:
        if required and not await conn.fetchval(REPLAYED, required):
            raise Stale
        return await conn.fetchrow(query, *args)
