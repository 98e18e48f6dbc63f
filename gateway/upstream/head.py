"""The request line and headers of an upstream request, built as one bytes object so they
leave in one write."""

from __future__ import annotations

from collections.abc import Iterable


class InvalidHead(ValueError):
    """A header name or value would break the request's framing (CR or LF in it)."""


def request_head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]],
                 chunked: bool) -> bytes:
    """``headers`` must carry the framing of a body sent with a known length
    (Content-Length); ``chunked`` adds ``Transfer-Encoding: chunked`` for one without."""
    parts = [method, " ", target, " HTTP/1.1\r\nHost: ", host, "\r\n"]
    lines = 3  # the request line, Host, and the blank line ending the head
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
        lines += 1
    if chunked:
        parts.append("Transfer-Encoding: chunked\r\n")
        lines += 1
    parts.append("\r\n")
    text = "".join(parts)
    # One count over the whole head instead of a check per value: every CR and LF must be a
    # line end we wrote, else a value could smuggle a header or a second request.
    if text.count("\n") != lines or text.count("\r") != lines:
        raise InvalidHead("a request header contains CR or LF")
    # Header values not UTF-8 were refused on arrival; surrogates would be bytes read that way.
    return text.encode("utf-8", "surrogateescape")
