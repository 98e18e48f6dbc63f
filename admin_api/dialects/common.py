"""What every dialect needs: its error bodies, root-key authentication, and the translation
of the core's errors into its own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from admin_api.auth import KEY, Principal
from admin_api.errors import REQUEST_ID, ApiError
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


def handler(fn: Handler) -> Handler:
    """Turns DialectError and the core's ApiError into ``{"error": message}`` bodies."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await fn(request)
        except DialectError as exc:
            return json({"error": exc.message, "request_id": request[REQUEST_ID]}, exc.status)
        except ApiError as exc:
            return json({"error": exc.message, "request_id": request[REQUEST_ID]}, exc.status)
        except ValidationError as exc:  # a value the core refuses (too long, NUL, out of range)
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return json({"error": f"Request body is invalid ({where}: {first['msg']})",
                         "request_id": request[REQUEST_ID]}, 400)

    wrapped.__name__ = fn.__name__
    return wrapped


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
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        detail = "not valid JSON" if first["type"] == "json_invalid" else first["msg"]
        raise DialectError(400, f"{invalid} ({where}: {detail})") from None


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")
