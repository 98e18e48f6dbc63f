"""Scopes are plain ``resource:action`` strings; ``resource:*`` and ``*`` are wildcards."""

from __future__ import annotations

import re
from collections.abc import Iterable

SCOPE_RE = re.compile(r"^(\*|[A-Za-z0-9_.\-]+:(\*|[A-Za-z0-9_.\-]+))$")


def is_valid_scope(scope: str) -> bool:
    return len(scope) <= 128 and SCOPE_RE.fullmatch(scope) is not None


def grants(held: Iterable[str], wanted: str) -> bool:
    """True when the scopes ``held`` include ``wanted`` (a wildcard in ``wanted`` needs one in
    ``held`` at least as wide)."""
    resource = wanted.partition(":")[0]
    return any(scope in ("*", wanted, f"{resource}:*") for scope in held)


def missing(held: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The scopes of ``wanted`` that ``held`` does not grant, in order."""
    held = tuple(held)
    return [scope for scope in wanted if not grants(held, scope)]
