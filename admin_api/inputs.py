"""Turns request bodies and query strings into validated models, with errors that name the
field and say what to fix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from admin_api.errors import BadRequest, Unprocessable
from gateway.scopes import SCOPE_RE

M = TypeVar("M", bound=BaseModel)
# What a value matching a pattern looks like, said instead of the pattern itself.
_PATTERNS = {SCOPE_RE.pattern: "a scope is resource:action (letters, digits, '_', '.', '-'), "
                               "resource:* or *, e.g. echo:read"}


def _field(loc: tuple[int | str, ...]) -> str:
    # Optional fields are unions: pydantic names the branch ("list[constrained-str]", "none")
    # in the location, which the client never wrote.
    parts = [str(p) for p in loc
             if not (isinstance(p, str) and ("[" in p or p == "none" or p[:1].isupper()))]
    return ".".join(parts) or "(body)"


def _message(item: dict[str, object]) -> str:
    if item["type"] == "extra_forbidden":
        return "unknown field; remove it or check its spelling"
    if item["type"] == "missing":
        return "required field is missing"
    advice = _PATTERNS.get(str((item.get("ctx") or {}).get("pattern")))  # type: ignore[attr-defined]
    if item["type"] == "string_pattern_mismatch" and advice is not None:
        return advice
    if item["type"] == "value_error":  # our validators' words, without pydantic's prefix
        return str(item["msg"]).removeprefix("Value error, ")
    if item["loc"] and item["loc"][-1] == "cursor":  # type: ignore[index]
        return (f"not a cursor this API returned ({item['msg']}); pass next_cursor from the "
                "previous page unchanged")
    return str(item["msg"])


def _unprocessable(exc: ValidationError, where: str) -> Unprocessable:
    errors = exc.errors(include_url=False)
    # "Input should be null" is the other branch of an optional field, not advice.
    errors = [e for e in errors if e["type"] != "none_required"] or errors
    fields = [{"field": _field(tuple(e["loc"])), "message": _message(dict(e))}
              for e in errors]
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    return Unprocessable(f"invalid {where}: {summary}", code="validation_failed", fields=fields)


async def body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    if not raw.strip():
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("the request body is not valid JSON; send a JSON object",
                             code="malformed_json") from None
        raise _unprocessable(exc, "request body") from None


def query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise _unprocessable(exc, "query parameters") from None


def patch_fields(body: BaseModel, not_nullable: Iterable[str] | None = None
                 ) -> dict[str, Any]:
    """The fields a PATCH sent (JSON values): at least one, and none of ``not_nullable``
    (default: any) sent as null — null clears only where clearing means something."""
    fields = body.model_dump(mode="json", exclude_unset=True)
    for name in fields if not_nullable is None else not_nullable:
        if name in fields and fields[name] is None:
            raise Unprocessable(f"{name}: cannot be null; leave it out to keep it",
                                code="validation_failed")
    if not fields:
        raise Unprocessable("send at least one field to change", code="validation_failed")
    return fields


def encode_cursor(position: str | int) -> str:
    """A page's ``next_cursor``: the last position it holds (the models' cursor types say
    which strings are cursors, so the OpenAPI document describes them exactly)."""
    return str(position)


def decode_cursor(cursor: str | None) -> str | None:
    return cursor


def decode_int_cursor(cursor: str | None) -> int | None:
    return None if cursor is None else int(cursor)
