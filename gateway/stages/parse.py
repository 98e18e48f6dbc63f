"""Reject a malformed key or a bad checksum before any store is touched."""

from __future__ import annotations

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.keyformat import is_customer_key
from gateway.verification import Code, check_format


async def check(ex: Exchange, deps: Deps) -> None:
    if ex.raw_key is None:
        return
    if ex.matched.extractor.customer_keys:
        if not is_customer_key(ex.raw_key):
            raise GatewayError(Code.INVALID_KEY)
    elif check_format(ex.raw_key) is not Code.VALID:
        raise GatewayError(Code.INVALID_KEY)
