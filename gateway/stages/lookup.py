"""Find the key by the hash of its secret: worker cache, then Redis, then PostgreSQL."""

from __future__ import annotations

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.keyformat import hash_key
from gateway.verification import Code


async def find(ex: Exchange, deps: Deps) -> None:
    if ex.raw_key is None:
        return
    ex.key = await deps.keys.find(hash_key(ex.raw_key))
    if ex.key is None:
        raise GatewayError(Code.INVALID_KEY)
