"""The closed set of verification outcomes, the checks that decide them, and their public
errors — written once, so a key means the same thing on every path that checks it.

Checks run in the order of DESIGN §5: format, lookup, state (status and expiry), provider,
scopes. A key of another organisation is indistinguishable from an unknown one."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway import keyformat, scopes
from gateway.database import Queryable
from gateway.keyrecord import KeyRecord, fetch_by_hash

PROVIDER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_PROVIDER_RE = re.compile(PROVIDER_PATTERN.rstrip("$"))

# Resolves the provider a client names; every request that sends a provider header asks this.
SELECT_ORG_BY_PROVIDER = "SELECT id FROM orgs WHERE provider_id = $1"


class Code(StrEnum):
    VALID = "valid"
    MISSING_KEY = "missing_key"
    INVALID_KEY = "invalid_key"
    INVALID_PROVIDER = "invalid_provider"
    KEY_EXPIRED = "key_expired"
    KEY_REVOKED = "key_revoked"
    KEY_PAUSED = "key_paused"
    INSUFFICIENT_SCOPE = "insufficient_scope"


# What a client is told for each refusal: HTTP status and a message that says what to do.
PUBLIC_ERRORS: dict[Code, tuple[int, str]] = {
    Code.MISSING_KEY: (401, "no API key was sent"),
    Code.INVALID_KEY: (401, "the API key is not valid"),
    Code.INVALID_PROVIDER: (400, "the provider header names no organisation; check the "
                                 "provider id"),
    Code.KEY_EXPIRED: (401, "this key has expired; ask for a new key"),
    Code.KEY_REVOKED: (401, "this key has been revoked; ask for a new key"),
    Code.KEY_PAUSED: (403, "this key is paused; resume it or use another key"),
    Code.INSUFFICIENT_SCOPE: (403, "this key lacks a scope this request needs"),
}

_STATUS_CODES = {
    "active": Code.VALID,
    "expired": Code.KEY_EXPIRED,
    "revoked": Code.KEY_REVOKED,
    "paused": Code.KEY_PAUSED,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    code: Code
    record: KeyRecord | None = None  # set once the key is known to the caller
    missing_scopes: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return self.code is Code.VALID


def is_provider_id(value: str) -> bool:
    return _PROVIDER_RE.fullmatch(value) is not None


def check_format(raw: str) -> Code:
    return Code.VALID if keyformat.is_well_formed(raw) else Code.INVALID_KEY


def check_state(record: KeyRecord, now: datetime) -> Code:
    return _STATUS_CODES[record.effective_status(now)]


def check_provider(record: KeyRecord, provider_org_id: str | None) -> Code:
    """A key presented with a provider must belong to that provider's organisation; a key of
    another organisation looks exactly like an unknown key."""
    if provider_org_id is not None and provider_org_id != record.org_id:
        return Code.INVALID_KEY
    return Code.VALID


def check_scopes(record: KeyRecord, required: Iterable[str]) -> Code:
    return Code.INSUFFICIENT_SCOPE if scopes.missing(record.scopes, required) else Code.VALID


async def org_for_provider(conn: Queryable, provider: str) -> str | None:
    if not is_provider_id(provider):
        return None
    org_id: str | None = await conn.fetchval(SELECT_ORG_BY_PROVIDER, provider)
    return org_id


async def verify(conn: Queryable, raw: str, *, now: datetime, provider: str | None = None,
                 required: Iterable[str] = (), within_org: str | None = None) -> Verdict:
    """All checks against the database, for callers without a cache (the admin API).
    ``within_org`` limits the keys that exist for this caller to one organisation."""
    if check_format(raw) is not Code.VALID:
        return Verdict(Code.INVALID_KEY)
    found = await verify_digest(conn, keyformat.hash_key(raw), now=now)
    record = found.record
    if record is None or (within_org is not None and record.org_id != within_org):
        return Verdict(Code.INVALID_KEY)
    if not found.valid:
        return found
    if provider is not None:
        provider_org = await org_for_provider(conn, provider)
        if provider_org is None:
            return Verdict(Code.INVALID_PROVIDER)
        if check_provider(record, provider_org) is not Code.VALID:
            return Verdict(Code.INVALID_KEY)
    lacking = tuple(scopes.missing(record.scopes, required))
    if lacking:
        return Verdict(Code.INSUFFICIENT_SCOPE, record, lacking)
    return Verdict(Code.VALID, record)


async def verify_digest(conn: Queryable, digest: bytes, *, now: datetime) -> Verdict:
    """The key whose live secret hashes to ``digest``, and whether it may be used now (a
    rotated-out secret past its grace opens nothing)."""
    record = await fetch_by_hash(conn, digest)
    if record is None:
        return Verdict(Code.INVALID_KEY)
    return Verdict(check_state(record, now), record)
