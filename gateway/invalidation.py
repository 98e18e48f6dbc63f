"""Telling every gateway worker that keys or organisations changed.

For each changed secret digest the admin API bumps the digest's generation (so no in-flight
lookup re-shares an old record) and drops its shared record, deletes counters it was given,
and only once all of that is done publishes one message per change on a channel every worker
listens on; workers drop what they cached. Every Redis command touches one key, so this works
on a Redis Cluster as on one node (PUBLISH reaches every node of a cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import orjson
from redis.exceptions import RedisError

from gateway.keycache import GENERATION_FIELD, HASH_KEY, RECORD_FIELD
from gateway.limits.script import LIMITS
from gateway.redisclient import Store, refresh_topology, topology_read

log = logging.getLogger(__name__)

CHANNEL = "keystile:invalidate"
RECONNECT_DELAY_S = 0.1  # a lost channel is re-made this soon (cheap while Redis is down)
HEALTH_INTERVAL_S = 5.0  # a quiet channel is PINGed this often
HEALTH_TIMEOUT_S = 3.0  # and must answer within this
# A bumped generation outlives any lookup that read the one before it (those end with the
# request's store deadline); a shared record, written later, sets its own shorter expiry.
GENERATION_TTL_S = 3600


def message(kind: str, ident: str) -> bytes:
    return orjson.dumps({"type": kind, "id": ident})


async def announce(redis: Store, changes: Iterable[tuple[str, str]],
                   hashes: Iterable[bytes] = (), redis_keys: Iterable[str] = ()) -> bool:
    """``changes`` are ("key" | "org", id) pairs; ``hashes`` the secrets whose shared records
    must go; ``redis_keys`` limit states whose lifetime and quota counts must be forgotten
    (re-seeded from PostgreSQL). False when Redis refused: the caller keeps the change and
    tries again (every step may safely run twice)."""
    try:
        if redis_keys:
            forget = redis.register_script(LIMITS)
            for name in redis_keys:  # one state, one slot, each
                await forget(keys=[name], args=["f"])
        async with redis.pipeline(transaction=False) as pipe:
            for digest in hashes:
                name = HASH_KEY.format(digest.hex())
                # The generation first: a lookup's write-back between the two then fails
                # its check, and one before them is dropped by the HDEL.
                pipe.hincrby(name, GENERATION_FIELD, 1)
                pipe.hdel(name, RECORD_FIELD)
                pipe.expire(name, GENERATION_TTL_S)
            if len(pipe):
                await pipe.execute()
        # Only now: a worker that hears this and looks again must not find the old record.
        messages = [message(kind, ident) for kind, ident in changes]
        if messages:
            async with redis.pipeline(transaction=False) as pipe:
                for body in messages:
                    pipe.publish(CHANNEL, body)
                await pipe.execute()
        return True
    except (RedisError, OSError) as exc:
        log.warning("invalidation not announced", extra={"error": type(exc).__name__})
        return False


async def listen(redis: Store, apply: Callable[[str, str], None],
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
            apply("all", "")
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
                    data = orjson.loads(item["data"])
                    apply(str(data["type"]), str(data["id"]))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    log.warning("ignored a malformed invalidation message")
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
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
