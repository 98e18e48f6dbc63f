"""Turns request bodies and query strings into validated models, with errors that name the
field and say what to fix."""

from __future__ import annotations

import base64
import binascii
import re
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from admin_api.errors import BadRequest, Unprocessable

M = TypeVar("M", bound=BaseModel)
_DIGITS = re.compile(r"[0-9]{1,18}")


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(body)"


def _message(item: dict[str, object]) -> str:
    if item["type"] == "extra_forbidden":
        return "unknown field; remove it or check its spelling"
    if item["type"] == "missing":
        return "required field is missing"
    return str(item["msg"])


def _unprocessable(exc: ValidationError, where: str) -> Unprocessable:
    fields = [{"field": _field(tuple(e["loc"])), "message": _message(dict(e))}
              for e in exc.errors(include_url=False)]
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


def encode_cursor(position: str | int) -> str:
    return base64.urlsafe_b64encode(f"c:{position}".encode()).decode().rstrip("=")


def _bad_cursor() -> Unprocessable:
    return Unprocessable("invalid query parameters: cursor: not a cursor this API returned; "
                         "pass next_cursor from the previous page unchanged",
                         code="validation_failed",
                         fields=[{"field": "cursor", "message": "not a valid cursor"}])


def decode_cursor(cursor: str | None) -> str | None:
    """Opaque keyset cursors; a tampered one is a 422 naming ``cursor``."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _bad_cursor() from None
    if not text.startswith("c:") or len(text) < 3:
        raise _bad_cursor()
    return text[2:]


def decode_int_cursor(cursor: str | None) -> int | None:
    position = decode_cursor(cursor)
    if position is None:
        return None
    if _DIGITS.fullmatch(position) is None:
        raise _bad_cursor()
    return int(position)
