"""Request ids: the client's own when it is a sane token, else a fresh one."""

from __future__ import annotations

import re
import secrets

from multidict import CIMultiDictProxy

_SANE = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def request_id(headers: CIMultiDictProxy[str]) -> str:
    given = headers.get("X-Request-Id", "")
    return given if _SANE.fullmatch(given) else secrets.token_hex(12)
