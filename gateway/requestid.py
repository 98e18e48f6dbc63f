"""Request ids: the client's own when it is a sane token, else a fresh one."""

from __future__ import annotations

import itertools
import os
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
    return _fresh()


class _Fresh:
    """A random prefix per process and a counter: 24 hex digits, unique, nothing to ask the
    system per request."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a child never repeats its parent

    def reset(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.count = itertools.count(int.from_bytes(secrets.token_bytes(3)))

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.count):08x}"


_fresh = _Fresh()
