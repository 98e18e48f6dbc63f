"""The key record both planes share, and the SQL that reads it by secret hash or by id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from gateway.database import Queryable

KEY_COLUMNS = """k.id, k.serial, k.org_id, k.owner_id, k.name, k.environment, k.root,
    k.parent_id, k.scopes, k.status, k.expires_at, k.usage_limit, k.usage_count, k.quota,
    k.rate_limits, k.is_default, k.metadata, k.prefix, k.key_prefix, k.recoverable, k.created_at,
    k.updated_at, k.last_used_at, k.revoked_at, k.first_used_at, k.shadow_limits"""

# The limits shared with the key's organisation and owner travel with the key record.
_SHARED_LIMITS = """o.rate_limits AS org_rate_limits,
    COALESCE(ol.rate_limits, '[]'::jsonb) AS owner_rate_limits"""
_SHARED_JOINS = """JOIN orgs o ON o.id = k.org_id
LEFT JOIN owner_limits ol ON ol.org_id = k.org_id AND ol.owner_id = k.owner_id"""

# The hot lookup: a presented secret (hashed) to its key, honouring rotation grace.
SELECT_BY_HASH = f"""
SELECT {KEY_COLUMNS}, {_SHARED_LIMITS}
FROM key_secrets s JOIN keys k ON k.id = s.key_id {_SHARED_JOINS}
WHERE s.hash = $1 AND (s.expires_at IS NULL OR s.expires_at > now())"""

SELECT_BY_ID = f"""SELECT {KEY_COLUMNS}, {_SHARED_LIMITS}
FROM keys k {_SHARED_JOINS} WHERE k.id = $1"""

# The gateway's cache miss: the record plus when this particular secret stops working.
SELECT_WITH_SECRET_BY_HASH = f"""
SELECT {KEY_COLUMNS}, {_SHARED_LIMITS}, s.expires_at AS secret_expires_at
FROM key_secrets s JOIN keys k ON k.id = s.key_id {_SHARED_JOINS}
WHERE s.hash = $1 AND (s.expires_at IS NULL OR s.expires_at > now())"""

_TIME_FIELDS = ("expires_at", "created_at", "updated_at", "last_used_at", "revoked_at",
                "first_used_at")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    serial: int
    org_id: str
    owner_id: str | None
    name: str
    environment: str
    root: bool
    parent_id: str | None
    scopes: tuple[str, ...]
    status: str
    expires_at: datetime | None
    usage_limit: int | None
    usage_count: int
    quota: dict[str, Any] | None
    rate_limits: tuple[dict[str, Any], ...]
    is_default: bool
    metadata: dict[str, Any]
    prefix: str
    key_prefix: str
    recoverable: bool
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    first_used_at: datetime | None = None
    shadow_limits: bool = False  # over-limit requests pass, measured (shadow mode)
    org_rate_limits: tuple[dict[str, Any], ...] = ()
    owner_rate_limits: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> KeyRecord:
        return cls.from_values(dict(row))

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> KeyRecord:
        for name in ("scopes", "rate_limits", "org_rate_limits", "owner_rate_limits"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def to_json(self, secret_expires_at: datetime | None) -> bytes:
        """The form shared between gateway workers through Redis."""
        data = {name: getattr(self, name) for name in self.__slots__}
        data["secret_expires_at"] = secret_expires_at
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes) -> tuple[KeyRecord, datetime | None]:
        data = orjson.loads(raw)
        for name in (*_TIME_FIELDS, "secret_expires_at"):
            if data[name] is not None:
                data[name] = datetime.fromisoformat(data[name])
        secret_expires_at = data.pop("secret_expires_at")
        # A record cached by a newer version during a rolling upgrade may carry more fields.
        known = {name: data[name] for name in cls.__slots__ if name in data}
        return cls.from_values(known), secret_expires_at

    def effective_status(self, now: datetime) -> str:
        """``status`` with ``expired`` derived from ``expires_at``; revoked outranks expired."""
        if self.status != "revoked" and self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return self.status


async def fetch_by_hash(conn: Queryable, digest: bytes) -> KeyRecord | None:
    row = await conn.fetchrow(SELECT_BY_HASH, digest)
    return KeyRecord.from_row(row) if row else None

