"""The Redis channel on which the control plane announces changed keys and organisations,
so every gateway worker can drop what it cached."""

from __future__ import annotations

import logging

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CHANNEL = "keystile:invalidate"


def message(kind: str, ident: str) -> bytes:
    return orjson.dumps({"type": kind, "id": ident})


async def publish(redis: Redis, kind: str, ident: str) -> bool:
    """Best effort: when Redis is unreachable the cache TTL still bounds staleness."""
    try:
        await redis.publish(CHANNEL, message(kind, ident))
        return True
    except (RedisError, OSError) as exc:
        log.warning("invalidation not published", extra={"type": kind, "id": ident,
                                                         "error": type(exc).__name__})
        return False
