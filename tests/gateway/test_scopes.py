from __future__ import annotations

import pytest

from gateway.scopes import grants, is_valid_scope, missing


@pytest.mark.parametrize(("held", "wanted", "ok"), [
    (["orders:read"], "orders:read", True),
    (["orders:read"], "orders:write", False),
    (["orders:*"], "orders:write", True),
    (["orders:*"], "orders:*", True),
    (["orders:read"], "orders:*", False),
    (["*"], "anything:goes", True),
    (["*"], "*", True),
    (["orders:*"], "*", False),
    (["orders:*"], "products:read", False),
    ([], "orders:read", False),
])
def test_grants(held: list[str], wanted: str, ok: bool) -> None:
    assert grants(held, wanted) is ok


def test_missing_lists_what_is_not_granted_in_order() -> None:
    assert missing(["orders:*"], ["products:read", "orders:write", "a:b"]) == [
        "products:read", "a:b"]


@pytest.mark.parametrize(("scope", "ok"), [
    ("orders:read", True), ("orders:*", True), ("*", True), ("orders", False),
    ("orders:", False), (":read", False), ("a b:c", False), ("*:read", False)])
def test_scope_syntax(scope: str, ok: bool) -> None:
    assert is_valid_scope(scope) is ok


def test_trailing_newlines_are_not_valid() -> None:
    from gateway import keyformat

    assert not is_valid_scope("a:b\n")
    assert not keyformat.is_valid_prefix("ks\n")
    ident = keyformat.new_id("key")
    assert keyformat.is_id("key", ident) and not keyformat.is_id("key", ident + "\n")
