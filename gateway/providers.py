"""Provider id → organisation id, cached per worker (organisation changes clear it)."""

from __future__ import annotations

import time

import asyncpg

from gateway.errors import GatewayError
from gateway.keycache import POSTGRES_FAILURES
from gateway.verification import SELECT_ORG_BY_PROVIDER, is_provider_id


class ProviderLookup:
    def __init__(self, pool: asyncpg.Pool, ttl_s: float, size: int = 10_000) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self.size = size
        self.entries: dict[str, tuple[str | None, float]] = {}

    async def org_id(self, provider: str) -> str | None:
        if not is_provider_id(provider):
            return None
        now = time.monotonic()
        cached = self.entries.get(provider)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            org_id: str | None = await self.pool.fetchval(SELECT_ORG_BY_PROVIDER, provider)
        except POSTGRES_FAILURES:
            if cached is not None:  # PostgreSQL is down: the last answer beats none
                return cached[0]
            raise GatewayError("store_unavailable") from None
        if len(self.entries) >= self.size:
            self.entries.clear()
        self.entries[provider] = (org_id, now + self.ttl_s)
        return org_id

    def clear(self) -> None:
        """An organisation changed: forget answers, but keep them usable while PostgreSQL is
        down (expired entries are only served when it cannot be asked)."""
        now = time.monotonic()
        self.entries = {p: (org, now) for p, (org, _) in self.entries.items()}
