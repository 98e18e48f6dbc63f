"""Telling every gateway worker that keys or organisations changed.

The admin API deletes the shared Redis records of the changed keys, bumps the generation
counter (so no in-flight lookup re-shares an old record) and publishes one message per change
on a channel every worker listens on; workers drop what they cached."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.keycache import GENERATION_KEY, HASH_KEY
from gateway.limits.script import LIMITS

log = logging.getLogger(__name__)

CHANNEL = "keystile:invalidate"
RECONNECT_DELAY_S = 0.1  # a lost channel is re-made this soon (cheap while Redis is down)
HEALTH_INTERVAL_S = 5.0  # a quiet channel is PINGed this often
HEALTH_TIMEOUT_S = 3.0  # and must answer within this


def message(kind: str, ident: str) -> bytes:
    return orjson.dumps({"type": kind, "id": ident})


async def announce(redis: Redis, changes: Iterable[tuple[str, str]],
                   hashes: Iterable[bytes] = (), redis_keys: Iterable[str] = ()) -> bool:
    """``changes`` are ("key" | "org", id) pairs; ``hashes`` the secrets whose shared records
    must go; ``redis_keys`` limit states whose lifetime and quota counts must be forgotten
    (re-seeded from PostgreSQL). False when Redis refused: the caller keeps the change and
    tries again (forgetting twice is harmless)."""
    try:
        if redis_keys:
            forget = redis.register_script(LIMITS)
            for name in redis_keys:  # one state, one slot, each
                await forget(keys=[name], args=["f"])
        async with redis.pipeline(transaction=True) as pipe:
            for digest in hashes:
                pipe.delete(HASH_KEY.format(digest.hex()))
            pipe.incr(GENERATION_KEY)
            for kind, ident in changes:
                pipe.publish(CHANNEL, message(kind, ident))
            await pipe.execute()
        return True
    except (RedisError, OSError) as exc:
        log.warning("invalidation not announced", extra={"error": type(exc).__name__})
        return False


async def listen(redis: Redis, apply: Callable[[str, str], None],
                 subscribed: asyncio.Event | None = None) -> None:
    """Applies every message until cancelled. A connection that goes quiet is probed with a
    PING every ``HEALTH_INTERVAL_S``; one that fails or does not answer within
    ``HEALTH_TIMEOUT_S`` is dropped and re-made, and everything cached is dropped too, since
    messages may have been missed meanwhile."""
    while True:
        pubsub = redis.pubsub()
        try:
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
            if subscribed is not None:
                subscribed.clear()
            await asyncio.sleep(RECONNECT_DELAY_S)
        except Exception:  # never let the listener die: a worker without it serves stale keys
            log.exception("invalidation listener failed; restarting it")
            if subscribed is not None:
                subscribed.clear()
            await asyncio.sleep(RECONNECT_DELAY_S)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
