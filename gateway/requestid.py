"""Request ids: the client's own when it is a sane token, else a fresh one."""

from __future__ import annotations

import re
import secrets

from multidict import CIMultiDictProxy

from gateway import keyformat

_SANE = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def request_id(headers: CIMultiDictProxy[str]) -> str:
    given = headers.get("X-Request-Id", "")
    # A value shaped like a key is never adopted: request ids are logged and forwarded.
    if _SANE.fullmatch(given) and not keyformat.is_well_formed(given):
        return given
    return secrets.token_hex(12)
