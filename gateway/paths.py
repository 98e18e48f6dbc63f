"""The one path a request is judged and forwarded by.

The raw request target is normalised once: percent-escapes of unreserved characters are
decoded (``%61`` is ``a``), ``//`` is merged, ``.`` and ``..`` segments are resolved. Anything
that different servers could read differently is refused instead: encoded ``/``, ``\\``,
``.``, NUL and control characters, a raw backslash, ``;`` path parameters (``/..;/`` is ``..``
to some servers), double encoding (``%25`` + hex), bytes that can never be UTF-8 (overlong
``%C0``/``%C1``, ``%F5``-``%FF``), or ``..`` above the root. Route matching, the scope check
and the upstream all see the same normalised string."""

from __future__ import annotations

import re

UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_ALLOWED_RAW = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@%/]*")
_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")
_NEVER_UTF8 = re.compile(r"%(?:[Cc][01]|[Ff][5-9A-Fa-f])")


class UnsafePath(ValueError):
    """The path cannot be forwarded safely; the message says why."""


def _decode_unreserved(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    char = chr(byte)
    if char in UNRESERVED:
        return char
    if char == ".":
        raise UnsafePath("encoded dot ('%2e') in the path")
    if char in "/\\":
        raise UnsafePath("encoded slash or backslash in the path")
    if byte < 0x20 or byte == 0x7F:
        raise UnsafePath("encoded control character in the path")
    return "%" + match.group(1).upper()


def normalise(raw_path: str) -> str:
    """``raw_path`` is the request target without the query string."""
    if not raw_path.startswith("/"):
        raise UnsafePath("the path must start with '/'")
    if "\\" in raw_path:
        raise UnsafePath("backslash in the path")
    if ";" in raw_path:
        raise UnsafePath("';' path parameters are not accepted")
    if _DOUBLE_ENCODED.search(raw_path):
        raise UnsafePath("double percent-encoding ('%25' followed by hex) in the path")
    if _NEVER_UTF8.search(raw_path):
        raise UnsafePath("an escape that can never be UTF-8 (e.g. an overlong '%C0')")
    if _ALLOWED_RAW.fullmatch(raw_path) is None:
        raise UnsafePath("characters in the path that must be percent-encoded")
    decoded = _ESCAPE_RE.sub(_decode_unreserved, raw_path)
    if "%" in _ESCAPE_RE.sub("", decoded):
        raise UnsafePath("a '%' that does not start a percent-escape")
    segments: list[str] = []
    parts = decoded.split("/")[1:]
    for index, segment in enumerate(parts):
        last = index == len(parts) - 1
        if segment == "..":
            if not segments:
                raise UnsafePath("'..' climbs above the root")
            segments.pop()
            if last:
                segments.append("")
        elif segment == ".":
            if last:
                segments.append("")
        elif segment == "" and not last:
            continue  # '//' merged
        else:
            segments.append(segment)
    return "/" + "/".join(segments)


def under(path: str, prefix: str) -> bool:
    """True when ``path`` is ``prefix`` or below it on a segment boundary."""
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")
