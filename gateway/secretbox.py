"""Encryption of recoverable secrets: AES-256-GCM with a random 96-bit nonce, the key id as
associated data (a ciphertext cannot be moved to another key). The key comes from
KEYSTILE_ENCRYPTION_KEY: 32 random bytes, base64-encoded."""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_LEN = 12


class SecretBoxError(Exception):
    """The encryption key is missing or wrong for this ciphertext."""


def parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    if len(key) != 32:
        raise ValueError("must encode exactly 32 bytes (e.g. `openssl rand -base64 32`)")
    return key


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def seal(key: bytes, key_id: str, secret: str) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, secret.encode(), key_id.encode())


def open_(key: bytes, key_id: str, sealed: bytes) -> str:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:],
                                   key_id.encode()).decode()
    except InvalidTag:
        raise SecretBoxError("the encryption key does not open this secret") from None
