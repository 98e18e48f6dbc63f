"""What a request changed, recorded in the invalidation outbox inside its own transaction
(before secrets are deleted), and delivered to the gateways once it has committed.

Delivery drops the shared Redis records of the affected secrets and bumps their generations
(and forgets the lifetime and quota counts of the limit states named, to be re-seeded from
PostgreSQL), then publishes one message per change. When Redis cannot take
it, the request that made the change tries again at once, a few times within a fraction of a
second (``ANNOUNCE_BACKOFF_S``: a revoked key must not keep serving for long); if Redis still
refuses, the rows stay and the admin process retries every second (``drain_forever``), so a
committed change is always announced eventually — never silently dropped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import asyncpg

from gateway import invalidation, replica
from gateway.database import Connection
from gateway.redisclient import Store

log = logging.getLogger(__name__)

HASHES_OF_KEY = "SELECT hash FROM key_secrets WHERE key_id = $1"
HASHES_OF_ORG = """SELECT s.hash FROM key_secrets s JOIN keys k ON k.id = s.key_id
WHERE k.org_id = $1"""
ENQUEUE = """INSERT INTO invalidation_outbox (kind, ident, hashes, redis_keys)
VALUES ($1, $2, $3, $4) RETURNING id"""
# Oldest first; SKIP LOCKED lets several admin processes drain side by side.
PENDING = """SELECT id, kind, ident, hashes, redis_keys FROM invalidation_outbox
ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED"""
# A request's own changes: NOWAIT, since rows the drainer holds may be failing to deliver
# right now, and skipping them would look like success.
OWN = """SELECT id, kind, ident, hashes, redis_keys FROM invalidation_outbox
WHERE id = ANY($1) ORDER BY id FOR UPDATE NOWAIT"""
DONE = "DELETE FROM invalidation_outbox WHERE id = ANY($1)"
RETRY_INTERVAL_S = 1.0
# Waits before the request's own further attempts to announce (~0.35 s in all); none is
# started once ANNOUNCE_RETRY_FOR_S have passed (a stalled Redis would hold the answer long).
ANNOUNCE_BACKOFF_S = (0.05, 0.1, 0.2)
ANNOUNCE_RETRY_FOR_S = 1.0


@dataclass
class Changes:
    ids: list[int] = field(default_factory=list)

    async def key(self, conn: Connection, key_id: str, redis_keys: list[str] | None = None
                  ) -> None:
        hashes = [bytes(r["hash"]) for r in await conn.fetch(HASHES_OF_KEY, key_id)]
        self.ids.append(await conn.fetchval(ENQUEUE, "key", key_id, hashes, redis_keys or []))

    async def org(self, conn: Connection, org_id: str) -> None:
        hashes = [bytes(r["hash"]) for r in await conn.fetch(HASHES_OF_ORG, org_id)]
        self.ids.append(await conn.fetchval(ENQUEUE, "org", org_id, hashes, []))

    async def counters(self, conn: Connection, redis_keys: list[str]) -> None:
        """Limit states whose lifetime and quota counts must be forgotten (re-seeded from
        PostgreSQL on the next request)."""
        self.ids.append(await conn.fetchval(ENQUEUE, "none", "", [], redis_keys))

    async def announce(self, pool: asyncpg.Pool, redis: Store) -> None:
        """After commit: deliver now, trying again a few times at once if Redis refused;
        what still cannot be delivered is left to the drainer."""
        if not self.ids:
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + ANNOUNCE_RETRY_FOR_S
        for wait in (*ANNOUNCE_BACKOFF_S, None):
            async with pool.acquire() as conn:
                if await drain(conn, redis, self.ids):
                    return
            if wait is None or loop.time() + wait > give_up:
                return  # the drainer takes over
            await asyncio.sleep(wait)


async def drain(conn: Connection, redis: Store, ids: list[int] | None = None) -> bool:
    """Delivers pending invalidations (``ids``, or all); True when nothing is left over."""
    try:
        async with conn.transaction():
            rows = await (conn.fetch(PENDING) if ids is None else conn.fetch(OWN, ids))
            if not rows:
                return True
            changes = [(r["kind"], r["ident"]) for r in rows if r["kind"] != "none"]
            hashes = [bytes(h) for r in rows for h in r["hashes"]]
            extra = [k for r in rows for k in r["redis_keys"]]
            # These rows' changes have committed: the position now is at or past theirs.
            position = int(await conn.fetchval(replica.CURRENT))
            if not await invalidation.announce(redis, changes, hashes, extra, position):
                return False  # rows stay; retried
            await conn.execute(DONE, [r["id"] for r in rows])
    except asyncpg.LockNotAvailableError:
        return False  # another process is delivering them right now: look again shortly
    return len(rows) < 500


async def drain_forever(pool: asyncpg.Pool, redis: Store, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with pool.acquire() as conn:
                await drain(conn, redis)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                # a pooled connection that read the server's goodbye (a primary stopped):
                # this loop must outlive it, or the outbox is never retried again
                asyncpg.InternalClientError) as exc:
            log.warning("invalidation outbox not drained: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):  # the interval passed: try again
            await asyncio.wait_for(stop.wait(), RETRY_INTERVAL_S)
