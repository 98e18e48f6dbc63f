"""The closed set of verification outcomes and the checks that decide them.

Both the gateway pipeline and ``POST /v1/verify`` use these, so a key means the same thing
everywhere. The checks are pure: they read a record and return a code."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from gateway import keyformat, scopes
from gateway.keyrecord import KeyRecord


class Code(StrEnum):
    VALID = "valid"
    MISSING_KEY = "missing_key"
    INVALID_KEY = "invalid_key"
    INVALID_PROVIDER = "invalid_provider"
    KEY_EXPIRED = "key_expired"
    KEY_REVOKED = "key_revoked"
    KEY_PAUSED = "key_paused"
    INSUFFICIENT_SCOPE = "insufficient_scope"


_STATUS_CODES = {
    "active": Code.VALID,
    "expired": Code.KEY_EXPIRED,
    "revoked": Code.KEY_REVOKED,
    "paused": Code.KEY_PAUSED,
}


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
