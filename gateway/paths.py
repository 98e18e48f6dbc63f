"""The one path a request is judged and forwarded by.

The raw request target is checked before anything is decoded: only characters a path may
carry raw, and every ``%`` starting a two-hex-digit escape (so ``%%32%65`` or ``%2%65`` can
never become ``%2e``). Then every run of escapes is decoded once, as UTF-8, and written back in
one canonical form: unreserved characters raw (``%61`` is ``a``), everything else as upper-case
``%XX``. ``//`` is merged, ``.`` and ``..`` segments are resolved.

Anything that some upstream decoder (nginx, Go, Node, a Java servlet, Python, Windows) could
read as another path is refused instead: encoded ``/``, ``\\``, ``.``, ``;``, ``%``, ``?``,
``#``; NUL, control and invisible format characters; a raw ``\\`` or ``;`` (``/..;/`` is ``..``
to some servers); bytes that are not UTF-8 (overlong ``%C0%AE``); characters that Unicode
compatibility normalisation changes (fullwidth ``．``, one dot leader ``․``) or that are drawn
like a path delimiter (division slash ``∕``, fraction slash ``⁄``, ¥ read as ``\\`` in Japanese
Windows); a segment ending in ``.`` or a space (Windows drops them); ``..`` above the root.

So one decode of the forwarded path leaves no ``%`` in it: decoding again changes nothing,
and every server reads the segments the gateway routed and scope-checked."""

from __future__ import annotations

import re
import unicodedata

UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")
_ALLOWED_RAW = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@%/]*")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# ASCII characters refused when percent-encoded, and why.
_ENCODED_REFUSED = {
    ".": "an encoded dot ('%2e') in the path",
    "/": "an encoded slash ('%2f') in the path",
    "\\": "an encoded backslash ('%5c') in the path",
    ";": "an encoded ';' ('%3b') in the path",
    "%": "an encoded '%' ('%25') in the path: some servers decode twice",
    "?": "an encoded '?' ('%3f') in the path",
    "#": "an encoded '#' ('%23') in the path",
}
# Drawn like '/' or '\' and mapped to them by some decoders (Windows "best fit" code pages),
# yet left alone by NFKC, so listed by hand.
_LOOKALIKES = frozenset("\u2044\u2215\u2571\u27cb\u29f8"   # / look-alikes
                        "\u2216\u2572\u27cd\u29f5\u29f9"   # \ look-alikes
                        "\u00a5\u20a9")                    # ¥ ₩: '\' in CP932 / CP949


class UnsafePath(ValueError):
    """The path cannot be forwarded safely; the message says why."""


def _canonical(match: re.Match[str]) -> str:
    """One run of escapes, decoded once and written back canonically."""
    try:
        text = bytes.fromhex(match.group(0).replace("%", "")).decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafePath("percent-escapes that are not UTF-8 (e.g. an overlong '%C0%AE')"
                         ) from None
    out: list[str] = []
    for char in text:
        if char in UNRESERVED:
            out.append(char)
            continue
        if char in _ENCODED_REFUSED:
            raise UnsafePath(_ENCODED_REFUSED[char])
        if unicodedata.category(char) in ("Cc", "Cf"):
            raise UnsafePath(f"an encoded control or invisible character (U+{ord(char):04X}) "
                             "in the path")
        if not char.isascii() and (char in _LOOKALIKES
                                   or unicodedata.normalize("NFKC", char) != char):
            raise UnsafePath(f"a look-alike character (U+{ord(char):04X}) in the path that "
                             "some servers read as another one; send the plain character")
        out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
    return "".join(out)


def normalise(raw_path: str) -> str:
    """``raw_path`` is the request target without the query string."""
    if not raw_path.startswith("/"):
        raise UnsafePath("the path must start with '/'")
    if "\\" in raw_path:
        raise UnsafePath("backslash in the path")
    if ";" in raw_path:
        raise UnsafePath("';' path parameters are not accepted")
    if _ALLOWED_RAW.fullmatch(raw_path) is None:
        raise UnsafePath("characters in the path that must be percent-encoded")
    # Before decoding: a decoded path must never be able to form a new escape.
    if _STRAY_PERCENT.search(raw_path):
        raise UnsafePath("a '%' that does not start a two-hex-digit escape such as '%2F'")
    canonical = _ESCAPES.sub(_canonical, raw_path)
    segments: list[str] = []
    parts = canonical.split("/")[1:]
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
        elif segment.endswith((".", "%20")):
            # Windows servers drop them: '/admin./x' would be '/admin/x' there.
            raise UnsafePath("a path segment ending in '.' or a space")
        else:
            segments.append(segment)
    return "/" + "/".join(segments)


def under(path: str, prefix: str) -> bool:
    """True when ``path`` is ``prefix`` or below it on a segment boundary."""
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")
