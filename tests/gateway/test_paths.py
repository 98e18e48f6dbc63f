from __future__ import annotations

import pytest

from gateway.paths import UnsafePath, normalise, under


@pytest.mark.parametrize(("raw", "expected"), [
    ("/echo", "/echo"),
    ("//echo", "/echo"),
    ("/a//b///c", "/a/b/c"),
    ("/public/../echo", "/echo"),
    ("/./echo", "/echo"),
    ("/echo/.", "/echo/"),
    ("/echo/x/..", "/echo/"),
    ("/ech%6f", "/echo"),
    ("/ECHO", "/ECHO"),
    ("/echo/%20x%2B", "/echo/%20x%2B"),
    ("/echo/a%7eb", "/echo/a~b"),
    ("/", "/"),
    # One canonical spelling: escapes upper-cased, UTF-8 kept encoded, sub-delims as sent.
    ("/echo/caf%c3%a9", "/echo/caf%C3%A9"),
    ("/echo/%21%3a!:", "/echo/%21%3A!:"),
    ("/echo/%F0%9F%98%80", "/echo/%F0%9F%98%80"),
    ("/echo/e%CC%81", "/echo/e%CC%81"),
    ("/echo/v1.2/x", "/echo/v1.2/x"),
])
def test_normalised(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize("raw", [
    "/public/%2e%2e/echo", "/%2fecho", "/echo%2f..%2fx", "/echo%00", "\\echo", "/echo\\x",
    "/echo%5cx", "/..", "/a/../..", "/echo%0a", "/echo%", "/echo%zz", "echo", "/e cho",
    "/%2E%2E/x", "/echo;x", "/public/..;/echo", "/a/.;x/b", "/%252e%252e/x", "/%C0%AE%C0%AE/x",
    "/%c1%9c", "/%F8x",
    # A stray '%' must not combine with what decoding yields into a new escape.
    "/public/%%32%65%%32%65/echo", "/public/%2%65%2%65/echo", "/%%32%66echo", "/%2%66echo",
    "/%%35%63echo", "/%%33%62echo", "/echo%2", "/%u002e%u002e/x",
    # Double encoding and encoded delimiters, in any case.
    "/public/%25%32%65%25%32%65/echo", "/a%25b", "/public/..%3B/echo", "/public/..%3b/echo",
    "/a%3Fb", "/a%23b", "/%2E%2e/x", "/.%2e/x", "/%2e./x",
    # Not UTF-8: overlong, surrogate, beyond U+10FFFF, a lone continuation byte, cut short.
    "/%E0%80%AE", "/%ED%A0%80", "/%F4%90%80%80", "/%80", "/%C3", "/caf%C3a%A9",
    # NFKC look-alikes of '.', '/', '\', ';', '%' and others, and hand-listed ones.
    "/public/%EF%BC%8E%EF%BC%8E/echo", "/public/%E2%80%A4%E2%80%A4/echo", "/%E2%80%A5/x",
    "/public%EF%BC%8Fecho", "/public%E2%88%95echo", "/public%E2%81%84echo",
    "/a%EF%BC%BCb", "/a%E2%88%96b", "/a%C2%A5b", "/a%CD%BEb", "/a%EF%BC%85b",
    "/%EF%BD%85cho", "/a%C2%A0b", "/a%E3%80%80b",
    # Control and invisible characters.
    "/a%C2%85b", "/a%E2%80%8Bb", "/a%E2%80%AEb", "/a%EF%BB%BFb", "/a%7F",
    # Segments Windows would read without their trailing dot or space.
    "/echo./x", "/echo...", "/echo%20/x", "/a/...",
])
def test_refused(raw: str) -> None:
    with pytest.raises(UnsafePath):
        normalise(raw)


def test_under_respects_segment_boundaries() -> None:
    assert under("/echo", "/echo") and under("/echo/x", "/echo") and under("/echo/x", "/echo/")
    assert not under("/echox", "/echo") and not under("/echo;x", "/echo")
    assert under("/anything", "/")
