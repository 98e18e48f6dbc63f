"""What every dialect needs: its error bodies, root-key authentication, and the translation
of the core's errors into its own."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from admin_api.auth import KEY, Principal
from admin_api.errors import REQUEST_ID, ApiError, ErrorShape
from admin_api.state import POOL
from gateway.verification import PUBLIC_ERRORS, verify

Handler = Callable[[web.Request], Awaitable[web.Response]]


class DialectError(Exception):
    """A failure in the dialect's own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def wording(request: web.Request, status: int, code: str, message: str) -> tuple[int, str]:
    """How every dialect departs from the canonical errors: a refused value is 400 (no seed
    knows 422), and an unknown path is not sent to the canonical API's OpenAPI document."""
    if code == "route_not_found":
        message = f"{request.path} is not an endpoint of this API"
    return (400 if status == 422 else status), message


def error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """``{"error": message, "request_id": …}``, the error shape of the dialects (their seeds
    document statuses and messages, not bodies)."""
    status, message = wording(request, status, code, message)
    return json({"error": message, "request_id": request[REQUEST_ID]}, status)


# The core's field names that surface in messages, as the camelCase dialects spell them.
CAMEL_CASE = {"expires_at": "expiresAt", "created_at": "createdAt",
              "last_used_at": "lastUsedAt", "key_prefix": "keyPrefix"}


def renamed(shape: ErrorShape, names: dict[str, str]) -> ErrorShape:
    """``shape`` with the core's field names in messages replaced by the dialect's."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")

    def rename(request: web.Request, status: int, code: str, message: str) -> web.Response:
        return shape(request, status, code, pattern.sub(lambda m: names[m[1]], message))

    return rename


def problem(exc: ValidationError) -> str:
    """``where: what`` of the first problem pydantic found."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    if first["type"] == "json_invalid":
        return "not valid JSON"
    return f"{where}: {str(first['msg']).removeprefix('Value error, ')}"


def handler_in(shape: ErrorShape) -> Callable[[Handler], Handler]:
    """A decorator answering DialectError, the core's ApiError and a value the core refuses
    (too long, NUL, out of range) in ``shape``."""

    def decorate(fn: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.Response:
            try:
                return await fn(request)
            except DialectError as exc:
                return shape(request, exc.status, "dialect_error", exc.message)
            except ApiError as exc:
                return shape(request, exc.status, exc.code, exc.message)
            except ValidationError as exc:
                return shape(request, 400, "validation_failed",
                             f"Request body is invalid ({problem(exc)})")

        wrapped.__name__ = fn.__name__
        return wrapped

    return decorate


handler = handler_in(error)


async def root_key(request: web.Request, raw: str | None, provider: str | None = None
                   ) -> Principal:
    """A root key of its organisation, checked like any key (format, state, provider)."""
    if not raw:
        raise DialectError(401, "an API key is required")
    verdict = await verify(request.app[POOL], raw.strip(), now=datetime.now(UTC),
                           provider=provider)
    if not verdict.valid or verdict.record is None:
        status, message = PUBLIC_ERRORS[verdict.code]
        raise DialectError(status, message)
    if not verdict.record.root:
        raise DialectError(403, "a root API key is required")
    return Principal(KEY, verdict.record)


async def body(request: web.Request, model: type[BaseModel], invalid: str
               ) -> Any:
    """The JSON body as ``model``; ``invalid`` (the dialect's words) and the first problem."""
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise DialectError(400, f"{invalid} ({problem(exc)})") from None


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")
