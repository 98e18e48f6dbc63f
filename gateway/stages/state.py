"""Status and expiry: paused, revoked and expired keys stop here."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.deps import Deps
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.verification import Code, check_state


async def check(ex: Exchange, deps: Deps) -> None:
    if ex.key is not None:
        code = check_state(ex.key, datetime.now(UTC))
        if code is not Code.VALID:
            raise GatewayError(code)
