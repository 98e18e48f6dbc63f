"""The raw API-key format: generation, parsing with checksum, hashing and display prefix.

A canonical key is ``<prefix>_<30 base62 chars of entropy><6 base62 chars of CRC32(entropy)>``.
The checksum lets the gateway reject typos and garbage before any store is touched.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ENTROPY_LEN = 30  # 30 base62 chars ≈ 178 bits
CHECKSUM_LEN = 6  # 62**6 > 2**32, so a CRC32 always fits
BODY_LEN = ENTROPY_LEN + CHECKSUM_LEN
DISPLAY_ENTROPY_LEN = 4  # secret characters a display prefix may reveal, for any key style
MAX_PREFIX_LEN = 24

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
_BODY_RE = re.compile(rf"^[0-9A-Za-z]{{{BODY_LEN}}}$")


def is_valid_prefix(prefix: str) -> bool:
    """A prefix is lower-case words joined by single underscores, e.g. ``ks_live``."""
    return len(prefix) <= MAX_PREFIX_LEN and PREFIX_RE.fullmatch(prefix) is not None


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(BASE62[rem])
    return "".join(reversed(chars))


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def checksum(entropy: str) -> str:
    return _base62(zlib.crc32(entropy.encode("ascii")), CHECKSUM_LEN)


def generate(prefix: str) -> str:
    """A new raw key under ``prefix``; the only place a secret is ever created."""
    if not is_valid_prefix(prefix):
        raise ValueError(f"invalid key prefix {prefix!r}")
    entropy = random_base62(ENTROPY_LEN)
    return f"{prefix}_{entropy}{checksum(entropy)}"


def is_well_formed(raw: str) -> bool:
    """True when ``raw`` has a valid prefix, a base62 body and a matching checksum."""
    prefix, sep, body = raw.rpartition("_")
    if not sep or not is_valid_prefix(prefix) or _BODY_RE.fullmatch(body) is None:
        return False
    entropy, check = body[:ENTROPY_LEN], body[ENTROPY_LEN:]
    return secrets.compare_digest(checksum(entropy), check)


def hash_key(raw: str) -> bytes:
    """SHA-256 of the raw key: what is stored and looked up, never the key itself."""
    return hashlib.sha256(raw.encode("utf-8")).digest()


def display_prefix(raw: str) -> str:
    """What identifies a key in listings: its public prefix and at most
    ``DISPLAY_ENTROPY_LEN`` characters of its secret, for every key style (``ks_live_AbC1``,
    ``K7QZ`` for an Open Dental CustomerKey). Stored once, so it is computed only here."""
    prefix, sep, body = raw.rpartition("_")
    if not sep or is_customer_key(raw):
        return raw[:DISPLAY_ENTROPY_LEN]
    return f"{prefix}_{body[:DISPLAY_ENTROPY_LEN]}"


ID_LEN = 22
_ID_RE = re.compile(rf"^[a-z]+_[0-9A-Za-z]{{{ID_LEN}}}$")


def new_id(kind: str) -> str:
    """A public identifier such as ``key_…`` or ``org_…`` (not secret, just unguessable)."""
    return f"{kind}_{random_base62(ID_LEN)}"


def is_id(kind: str, value: str) -> bool:
    """True when ``value`` could be an id made by ``new_id(kind)``: anything else is unknown
    without asking a store."""
    return value.startswith(f"{kind}_") and _ID_RE.fullmatch(value) is not None


_KEY_SHAPED = re.compile(rf"[a-z][a-z0-9]*(?:_[a-z0-9]+)*_[0-9A-Za-z]{{{BODY_LEN}}}")


def redact(text: str) -> str:
    """``text`` with every well-formed key in it replaced, for log lines."""
    return _KEY_SHAPED.sub(
        lambda m: "[redacted-key]" if is_well_formed(m.group(0)) else m.group(0), text)


def contains_key(text: str) -> bool:
    """True when a well-formed key appears anywhere in ``text``."""
    return any(is_well_formed(m.group(0)) for m in _KEY_SHAPED.finditer(text))


CUSTOMER_KEY_LEN = 16
_CUSTOMER_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_CUSTOMER_RE = re.compile(rf"[A-Z0-9]{{{CUSTOMER_KEY_LEN}}}")
CUSTOMER_KEY_PREFIX = "od"  # the key_prefix that marks a key of this style


def generate_customer_key() -> str:
    """Open Dental's style: 16 upper-case alphanumerics, no prefix and no checksum."""
    return "".join(secrets.choice(_CUSTOMER_ALPHABET) for _ in range(CUSTOMER_KEY_LEN))


def is_customer_key(raw: str) -> bool:
    return _CUSTOMER_RE.fullmatch(raw) is not None
