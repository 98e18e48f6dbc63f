"""Sending webhook deliveries (stub: being written)."""

from __future__ import annotations

import asyncio

import asyncpg

from gateway.settings import WebhookSettings


class Sender:
    def __init__(self, pool: asyncpg.Pool, settings: WebhookSettings, box_key: bytes | None
                 ) -> None:
        self.pool, self.settings, self.box_key = pool, settings, box_key

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def resend(self, delivery_id: str) -> None:
        """One attempt now, recorded like any other (the delivery is 'delivered' if it
        succeeds, whatever its state before)."""
