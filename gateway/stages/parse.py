"""Reject a malformed key or a bad checksum before any store is touched."""

from __future__ import annotations

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.verification import Code, check_format


async def check(ex: Exchange, deps: Deps) -> None:
    if ex.raw_key is not None and check_format(ex.raw_key) is not Code.VALID:
        raise GatewayError(Code.INVALID_KEY)
