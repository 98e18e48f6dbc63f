"""Store URLs fit for a message or a log: the password is replaced by ``***``."""

from __future__ import annotations


def redact(url: str) -> str:
    """The URL without its password (a cluster URL's seed list is kept)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.partition(":")[0]
        rest = f"{user}:***@{host}" if ":" in credentials else f"{user}@{host}"
    return f"{scheme}{sep}{rest}"
