"""Telling every gateway worker that keys or organisations changed.

For each changed secret digest the admin API bumps the digest's generation (so no in-flight
lookup re-shares an old record), drops its shared record and keeps beside them the primary's
WAL position of the change (``gateway.replica``), deletes counters it was given, and only once
all of that is done publishes one message per change on a channel every worker listens on;
workers drop what they cached. Every Redis command touches one key, so this works
on a Redis Cluster as on one node (PUBLISH reaches every node of a cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from gateway import replica
from gateway.keycache import HASH_KEY
from gateway.limits.script import LIMITS
from gateway.metrics import INVALIDATION_LAG
from gateway.redisclient import Store, refresh_topology, topology_read

log = logging.getLogger(__name__)

CHANNEL = "keystile:invalidate"
RECONNECT_DELAY_S = 0.1  # a lost channel is re-made this soon (cheap while Redis is down)
HEALTH_INTERVAL_S = 5.0  # a quiet channel is PINGed this often
HEALTH_TIMEOUT_S = 3.0  # and must answer within this
# A bumped generation outlives any lookup that read the one before it (those end with the
# request's store deadline); a shared record, written later, sets its own shorter expiry.
GENERATION_TTL_S = 3600


# One secret's hash: its generation bumped and its shared record dropped, in one step, and the
# WAL position of the change kept unless a later one is there already (positions written as
# 16 hex digits compare as strings). A lookup that sees the new generation sees the position.
_CHANGED = """
local seen = redis.call('HGET', KEYS[1], 'l')
if ARGV[1] ~= '' and (not seen or seen < ARGV[1]) then
  redis.call('HSET', KEYS[1], 'l', ARGV[1])
end
redis.call('HINCRBY', KEYS[1], 'g', 1)
redis.call('HDEL', KEYS[1], 'r')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "key", "org", or "all" (everything cached may be stale)
    ident: str
    position: int = 0  # the primary's WAL position once the change had committed (0: unknown)


def message(kind: str, ident: str, position: int = 0) -> bytes:
    """With the time it is announced (Unix time, ``at``), for the workers' lag metric."""
    return orjson.dumps({"type": kind, "id": ident, "lsn": replica.encode(position),
                         "at": time.time()})


async def announce(redis: Store, changes: Iterable[tuple[str, str]],
                   hashes: Iterable[bytes] = (), redis_keys: Iterable[str] = (),
                   position: int = 0) -> bool:
    """``changes`` are ("key" | "org", id) pairs; ``hashes`` the secrets whose shared records
    must go; ``redis_keys`` limit states whose lifetime and quota counts must be forgotten
    (re-seeded from PostgreSQL); ``position`` the primary's WAL position once they had
    committed (a gateway reads them from a replica only once it has replayed that far).
    False when Redis refused: the caller keeps the change and tries again (every step may
    safely run twice)."""
    try:
        if redis_keys:
            forget = redis.register_script(LIMITS)
            for name in redis_keys:  # one state, one slot, each
                await forget(keys=[name], args=["f"])
        encoded = replica.encode(position)
        async with redis.pipeline(transaction=False) as pipe:
            for digest in hashes:
                # EVAL, not EVALSHA: a cluster pipeline does not load scripts first.
                pipe.eval(_CHANGED, 1, HASH_KEY.format(digest.hex()), encoded, GENERATION_TTL_S)
            if len(pipe):
                await pipe.execute()
        # Only now: a worker that hears this and looks again must not find the old record.
        messages = [message(kind, ident, position) for kind, ident in changes]
        if messages:
            async with redis.pipeline(transaction=False) as pipe:
                for body in messages:
                    pipe.publish(CHANNEL, body)
                await pipe.execute()
        return True
    except (RedisError, OSError) as exc:
        log.warning("invalidation not announced", extra={"error": type(exc).__name__})
        return False


def _heard(data: bytes) -> Change:
    """A message as a change; its lag observed. Raises on a malformed one."""
    body = orjson.loads(data)
    at = body.get("at")
    if isinstance(at, int | float):
        INVALIDATION_LAG.observe(max(time.time() - at, 0.0))
    return Change(str(body["type"]), str(body["id"]), replica.decode(body.get("lsn")))


async def listen(redis: Store, apply: Callable[[Change], None],
                 subscribed: asyncio.Event | None = None) -> None:
    """Applies every message until cancelled. A connection that goes quiet is probed with a
    PING every ``HEALTH_INTERVAL_S``; one that fails or does not answer within
    ``HEALTH_TIMEOUT_S`` is dropped and re-made, and everything cached is dropped too, since
    messages may have been missed meanwhile."""
    while True:
        pubsub = None
        try:
            await topology_read(redis)  # a cluster's channel lives on the node of its slot
            pubsub = redis.pubsub()
            await asyncio.wait_for(pubsub.subscribe(CHANNEL), HEALTH_TIMEOUT_S)
            # Whatever was cached before this subscription may have missed a change (also
            # at start-up, if Redis was down then: entries cached meanwhile were unheard).
            apply(Change("all", ""))
            if subscribed is not None:
                subscribed.set()
            loop = asyncio.get_running_loop()
            quiet_since, pinged_at = loop.time(), None
            while True:
                item = await asyncio.wait_for(
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0),
                    HEALTH_TIMEOUT_S)
                now = loop.time()
                if item is not None:
                    quiet_since, pinged_at = now, None  # anything heard proves the link
                elif pinged_at is not None and now - pinged_at > HEALTH_TIMEOUT_S:
                    raise TimeoutError("no answer to PING on the invalidation channel")
                elif pinged_at is None and now - quiet_since > HEALTH_INTERVAL_S:
                    await asyncio.wait_for(pubsub.ping(), HEALTH_TIMEOUT_S)
                    pinged_at = now
                if item is None or item.get("type") != "message":
                    continue
                try:
                    change = _heard(item["data"])
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                    log.warning("ignored a malformed invalidation message")
                    continue
                apply(change)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("invalidation channel lost (%s); reconnecting", type(exc).__name__)
            refresh_topology(redis)  # on a cluster: the node heard may have failed over
            if subscribed is not None:
                subscribed.clear()
            await asyncio.sleep(RECONNECT_DELAY_S)
        except Exception:  # never let the listener die: a worker without it serves stale keys
            log.exception("invalidation listener failed; restarting it")
            if subscribed is not None:
                subscribed.clear()
            await asyncio.sleep(RECONNECT_DELAY_S)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
