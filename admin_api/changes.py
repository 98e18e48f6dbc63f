"""What a request changed, gathered inside its transaction (before secrets are deleted) and
announced to the gateways once it has committed."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from gateway import invalidation
from gateway.database import Connection

HASHES_OF_KEY = "SELECT hash FROM key_secrets WHERE key_id = $1"
HASHES_OF_ORG = """SELECT s.hash FROM key_secrets s JOIN keys k ON k.id = s.key_id
WHERE k.org_id = $1"""


@dataclass
class Changes:
    items: list[tuple[str, str]] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)

    async def key(self, conn: Connection, key_id: str) -> None:
        self.items.append(("key", key_id))
        self.hashes += [bytes(r["hash"]) for r in await conn.fetch(HASHES_OF_KEY, key_id)]

    async def org(self, conn: Connection, org_id: str) -> None:
        self.items.append(("org", org_id))
        self.hashes += [bytes(r["hash"]) for r in await conn.fetch(HASHES_OF_ORG, org_id)]

    async def announce(self, redis: Redis) -> None:
        if self.items:
            await invalidation.announce(redis, self.items, self.hashes)
