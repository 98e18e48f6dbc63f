"""Key lookup by secret hash: per-worker cache → Redis → PostgreSQL (a replica, when one is
configured and has caught up: ``gateway.replica``), read-through.

The worker cache is a bounded LRU plus a short negative cache for unknown hashes. Its entries
are trusted for ``cache_ttl_s`` while the worker hears the invalidation channel (every admin
change arrives there), and for only ``cache_ttl_unsubscribed_s`` while it does not (a change
may go unheard then). Redis shares records between workers and hosts: one Redis hash per
secret digest holds the record and that digest's generation, which the admin API bumps on
every change (``invalidation.announce``). A record read from PostgreSQL is written back only
if the generation is the one the lookup saw, by a script on that one key (so it works on a
Redis Cluster too), so a lookup racing an admin change cannot put a stale record back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from redis.exceptions import RedisError

from gateway import replica
from gateway.errors import GatewayError
from gateway.keyrecord import SELECT_WITH_SECRET_BY_HASH, KeyRecord
from gateway.metrics import STORE_ERRORS
from gateway.metrics import cache as cache_result
from gateway.redisclient import Store

log = logging.getLogger(__name__)

# A lookup that PostgreSQL cannot answer is a 503, never a 500 and never a pass. Among them
# the server's goodbye as asyncpg may meet it: a pooled connection that has read it but not
# yet its closed socket refuses the next query with an InternalClientError.
POSTGRES_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                     asyncpg.InternalClientError)

# Redis: hex digest -> hash {r: record JSON, g: generation} (bump the version with the
# record's shape). Keys of the older layouts (ks:h3:*, ks:gen) are no longer read; they expire.
HASH_KEY = "ks:h4:{}"
RECORD_FIELD = "r"
GENERATION_FIELD = "g"  # bumped by every admin change to the key owning this digest
POSITION_FIELD = "l"  # the primary's WAL position of the latest such change (gateway.replica)

# Store the record only if no admin change to this digest happened since the lookup began.
_SET_IF_UNCHANGED = """
if (redis.call('HGET', KEYS[1], 'g') or '0') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'r', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 0
"""


@dataclass(slots=True)
class _Entry:
    record: KeyRecord
    secret_expires_at: datetime | None
    stored: float  # monotonic time the entry was cached


@dataclass
class LocalCache:
    """One worker's cache; ``generation`` moves on every invalidation it applies.
    ``subscribed`` is set while the invalidation channel is heard."""

    size: int
    ttl_s: float
    negative_ttl_s: float
    unsubscribed_ttl_s: float = 1.0
    subscribed: asyncio.Event | None = None
    entries: OrderedDict[bytes, _Entry] = field(default_factory=OrderedDict)
    unknown: OrderedDict[bytes, float] = field(default_factory=OrderedDict)
    generation: int = 0

    def get(self, digest: bytes) -> _Entry | bool | None:
        """The entry, False when known to be unknown, None when not cached."""
        now = time.monotonic()
        entry = self.entries.get(digest)
        if entry is not None:
            heard = self.subscribed is None or self.subscribed.is_set()
            if now - entry.stored < (self.ttl_s if heard else self.unsubscribed_ttl_s):
                self.entries.move_to_end(digest)
                return entry
            del self.entries[digest]
        until = self.unknown.get(digest)
        if until is not None:
            if until > now:
                return False
            del self.unknown[digest]
        return None

    def put(self, digest: bytes, record: KeyRecord | None, secret_expires_at: datetime | None,
            generation: int) -> None:
        if generation != self.generation or self.size == 0:
            return  # an invalidation arrived while this lookup was in flight
        now = time.monotonic()
        if record is None:
            if self.negative_ttl_s:
                self.unknown[digest] = now + self.negative_ttl_s
                while len(self.unknown) > self.size:
                    self.unknown.popitem(last=False)
            return
        self.entries[digest] = _Entry(record, secret_expires_at, now)
        self.entries.move_to_end(digest)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def drop(self, *, key_id: str | None = None, org_id: str | None = None) -> None:
        self.generation += 1
        self.unknown.clear()  # a new key may now own a hash we called unknown (rotation)
        if key_id is None and org_id is None:
            self.entries.clear()
            return
        stale = [d for d, e in self.entries.items()
                 if e.record.id == key_id or e.record.org_id == org_id]
        for digest in stale:
            del self.entries[digest]


class KeyLookup:
    """``pool`` is the primary; ``replica`` (database_read_url) answers misses when it has
    replayed every change this lookup knows of: the primary's position when the invalidation
    channel was last (re)subscribed (``unfence``: read again before the replica is next
    used, since changes may have gone unheard before), those heard on it since (``heard``),
    and the one kept beside the secret's generation in Redis. While Redis cannot be read,
    the replica is not used: a change committed meanwhile could not be announced."""

    def __init__(self, cache: LocalCache, redis: Store, pool: asyncpg.Pool,
                 redis_ttl_s: int, replica: asyncpg.Pool | None = None) -> None:
        self.cache = cache
        self.redis = redis
        self.pool = pool
        self.replica = replica
        self.redis_ttl_s = redis_ttl_s
        self.position = 0  # the latest change's WAL position known
        self.fenced = False  # the primary's position since the last (re)subscription is known
        self._epoch = 0  # moves on every unfence: a position read before it is too old
        self._set_if_unchanged = redis.register_script(_SET_IF_UNCHANGED)

    async def find(self, digest: bytes) -> KeyRecord | None:
        cached = self.cache.get(digest)
        if cached is False:
            cache_result("negative").inc()
            return None
        now = datetime.now(UTC)
        if isinstance(cached, _Entry):
            cache_result("worker").inc()
            return None if _secret_expired(cached.secret_expires_at, now) else cached.record
        local_generation = self.cache.generation
        record, secret_expires_at, shared_generation, position = await self._from_redis(digest)
        if record is not None:
            cache_result("redis").inc()
        else:
            # Without Redis, no change made meanwhile was announced: the primary answers.
            required = None if shared_generation is None else max(position, self.position)
            record, secret_expires_at = await self._from_postgres(digest, required)
            if record is not None and shared_generation is not None:
                await self._share(digest, record, secret_expires_at, shared_generation, now)
        self.cache.put(digest, record, secret_expires_at, local_generation)
        if record is None or _secret_expired(secret_expires_at, now):
            return None
        return record

    def heard(self, position: int) -> None:
        """A change committed at WAL ``position`` was announced: the replica is read only once
        it has replayed that far."""
        self.position = max(self.position, position)

    def unfence(self) -> None:
        """Changes may have gone unheard (the channel was (re)subscribed): the replica waits
        until the primary's current position is known."""
        self.fenced = False
        self._epoch += 1

    async def _fence(self) -> bool:
        """Learns the primary's position if needed; False when it cannot be read."""
        if self.fenced:
            return True
        epoch = self._epoch
        try:
            position = int(await self.pool.fetchval(replica.CURRENT))
        except POSTGRES_FAILURES:
            return False
        self.heard(position)
        self.fenced = epoch == self._epoch
        return True

    async def _from_redis(self, digest: bytes
                          ) -> tuple[KeyRecord | None, datetime | None, str | None, int]:
        """The shared record, if any; the secret's generation (None: Redis failed) and the
        WAL position of its latest change."""
        try:
            raw, seen, position = await self.redis.hmget(
                HASH_KEY.format(digest.hex()), [RECORD_FIELD, GENERATION_FIELD, POSITION_FIELD])
        except (RedisError, OSError) as exc:
            STORE_ERRORS.labels(store="redis").inc()
            log.warning("redis unavailable for key lookup: %s", type(exc).__name__)
            return None, None, None, 0
        generation = seen.decode() if isinstance(seen, bytes) else "0"
        required = replica.decode(position)
        if not isinstance(raw, bytes):  # none shared (the client never decodes replies)
            return None, None, generation, required
        try:
            record, secret_expires_at = KeyRecord.from_json(raw)
        except (ValueError, TypeError, KeyError):
            log.warning("undecodable shared key record; reading PostgreSQL instead")
            return None, None, generation, required
        return record, secret_expires_at, generation, required

    async def _from_postgres(self, digest: bytes, required: int | None
                             ) -> tuple[KeyRecord | None, datetime | None]:
        """From the replica if it has replayed WAL position ``required`` and every change
        heard of, else (or if it fails, or ``required`` is None) from the primary."""
        if self.replica is not None and required is not None and await self._fence():
            required = max(required, self.position)
            try:
                row = await replica.fetchrow(self.replica, required,
                                             SELECT_WITH_SECRET_BY_HASH, digest)
                cache_result("replica").inc()
                return _from_row(row)
            except replica.Stale:
                pass
            except POSTGRES_FAILURES as exc:
                STORE_ERRORS.labels(store="postgres_replica").inc()
                log.warning("postgres replica unavailable for key lookup; reading the primary",
                            extra={"error": type(exc).__name__})
        cache_result("postgres").inc()
        try:
            row = await self.pool.fetchrow(SELECT_WITH_SECRET_BY_HASH, digest)
        except POSTGRES_FAILURES as exc:
            STORE_ERRORS.labels(store="postgres").inc()
            log.warning("postgres unavailable for key lookup",
                        extra={"error": type(exc).__name__})
            raise GatewayError("store_unavailable") from None
        return _from_row(row)

    async def _share(self, digest: bytes, record: KeyRecord,
                     secret_expires_at: datetime | None, generation: str, now: datetime) -> None:
        ttl = self.redis_ttl_s
        if secret_expires_at is not None:
            ttl = min(ttl, max(int((secret_expires_at - now).total_seconds()), 1))
        try:
            await self._set_if_unchanged(
                keys=[HASH_KEY.format(digest.hex())],
                args=[generation, record.to_json(secret_expires_at), ttl])
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable for key sharing", extra={"error": type(exc).__name__})


def _from_row(row: asyncpg.Record | None) -> tuple[KeyRecord | None, datetime | None]:
    if row is None:
        return None, None
    values = dict(row)
    secret_expires_at = values.pop("secret_expires_at")
    return KeyRecord.from_values(values), secret_expires_at


def _secret_expired(secret_expires_at: datetime | None, now: datetime) -> bool:
    return secret_expires_at is not None and secret_expires_at <= now
