"""Signing secrets and signatures, in the form Stripe made familiar:
``Keystile-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, with one
``v1`` per live secret (two while a rolled secret's grace period lasts)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from gateway.secretbox import SecretBoxError, open_, seal

HEADER = "Keystile-Signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def header(live: list[str], timestamp: int, body: bytes) -> str:
    return ",".join([f"t={timestamp}", *(f"v1={signature(s, timestamp, body)}" for s in live)])


def verify(value: str, body: bytes, secret: str, now: int, tolerance_s: int = 300) -> bool:
    """What a receiver does: some ``v1`` matches, and ``t`` is recent (no replays)."""
    parts = [p.partition("=") for p in value.split(",")]
    stamps = [v for k, _, v in parts if k == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit() or abs(now - int(stamps[0])) > tolerance_s:
        return False
    expected = signature(secret, int(stamps[0]), body)
    return any(hmac.compare_digest(expected, v) for k, _, v in parts if k == "v1")


def store(secret: str, endpoint_id: str, box_key: bytes | None) -> tuple[bytes, bool]:
    """How a secret is kept: sealed under the encryption key when there is one."""
    if box_key is None:
        return secret.encode(), False
    return seal(box_key, endpoint_id, secret), True


def load(stored: bytes, sealed: bool, endpoint_id: str, box_key: bytes | None) -> str:
    if not sealed:
        return bytes(stored).decode()
    if box_key is None:
        raise LookupError("this endpoint's secret is sealed; set KEYSTILE_ENCRYPTION_KEY")
    try:
        return open_(box_key, endpoint_id, bytes(stored))
    except SecretBoxError as exc:
        raise LookupError(f"this endpoint's secret: {exc}") from None
