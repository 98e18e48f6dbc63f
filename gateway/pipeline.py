"""The request pipeline of DESIGN §5, in order. A stage reads what earlier stages decided and
raises ``GatewayError`` to stop the request; a stopped request spends nothing. Adding a stage
is adding a module and one line here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.deps import Deps
from gateway.exchange import Exchange
from gateway.stages import (
    credential,
    headers,
    limits,
    lookup,
    parse,
    provider,
    route,
    scope,
    size,
    state,
)

Stage = Callable[[Exchange, Deps], Awaitable[None]]

STAGES: tuple[Stage, ...] = (
    size.check,         # 431 / 413 before anything else
    headers.check,      # header bytes that cannot be forwarded unchanged; 400 invalid_header
    route.resolve,      # normalised path → route; 400 / 404 / 405
    credential.extract,  # the key from the route's credential convention; 401 missing_key
    parse.check,        # format and checksum, no store touched; 401 invalid_key
    lookup.find,        # worker cache → Redis → PostgreSQL; 401 invalid_key
    state.check,        # paused / revoked / expired
    provider.check,     # the provider header, when sent, names the key's organisation
    scope.check,        # 403 insufficient_scope
    limits.spend,       # rate limits, quota, lifetime usage in one Redis call; 429
)


async def run(ex: Exchange, deps: Deps) -> None:
    for stage in STAGES:
        await stage(ex, deps)
