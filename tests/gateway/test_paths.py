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
])
def test_normalised(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize("raw", [
    "/public/%2e%2e/echo", "/%2fecho", "/echo%2f..%2fx", "/echo%00", "\\echo", "/echo\\x",
    "/echo%5cx", "/..", "/a/../..", "/echo%0a", "/echo%", "/echo%zz", "echo", "/e cho",
    "/%2E%2E/x", "/echo;x", "/public/..;/echo", "/a/.;x/b", "/%252e%252e/x", "/%C0%AE%C0%AE/x",
    "/%c1%9c", "/%F8x",
])
def test_refused(raw: str) -> None:
    with pytest.raises(UnsafePath):
        normalise(raw)


def test_under_respects_segment_boundaries() -> None:
    assert under("/echo", "/echo") and under("/echo/x", "/echo") and under("/echo/x", "/echo/")
    assert not under("/echox", "/echo") and not under("/echo;x", "/echo")
    assert under("/anything", "/")
