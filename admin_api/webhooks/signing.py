"""Signing secrets and signatures, in the form Stripe made familiar:
``Keystile-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, with one
``v1`` per live secret (two while a rolled secret's grace period lasts)."""

from __future__ import annotations

import hashlib
import hmac
import re
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
    if len(stamps) != 1 or not re.fullmatch(r"[0-9]{1,12}", stamps[0]) \
            or abs(now - int(stamps[0])) > tolerance_s:
        return False
    expected = signature(secret, int(stamps[0]), body).encode()
    return any(hmac.compare_digest(expected, v.encode()) for k, _, v in parts if k == "v1")


class SecretUnavailable(LookupError):
    """A sealed secret without the encryption key that opens it: the operator's to fix."""


def store(secret: str, endpoint_id: str, box_key: bytes | None) -> tuple[bytes, bool]:
    """How a secret is kept: sealed under the encryption key when there is one."""
    if box_key is None:
        return secret.encode(), False
    return seal(box_key, endpoint_id, secret), True


def load(stored: bytes, sealed: bool, endpoint_id: str, box_key: bytes | None) -> str:
    if not sealed:
        return bytes(stored).decode()
    if box_key is None:
        raise SecretUnavailable(f"the signing secret of {endpoint_id} is encrypted; set "
                                "KEYSTILE_ENCRYPTION_KEY to the key it was stored under")
    try:
        return open_(box_key, endpoint_id, bytes(stored))
    except SecretBoxError:
        raise SecretUnavailable(f"KEYSTILE_ENCRYPTION_KEY does not open the signing secret of "
                                f"{endpoint_id}; set the key it was stored under") from None
