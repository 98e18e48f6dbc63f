"""The admin API's errors: one base class carrying status, code and message, turned into the
JSON error body of DESIGN §4 in exactly one place (``error_middleware``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
from aiohttp import web
from asyncpg.exceptions._base import DataError as ArgumentError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.requestid import request_id as new_request_id

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A dialect's own error shape: (request, status, code, message) → the response it answers.
ErrorShape = Callable[[web.Request, int, str, str], web.Response]
# The path root of each mounted dialect (prefix included, longest first) and its error shape:
# every error under that root — 404, 405, 413, 503 included — is answered in that shape.
ERROR_SHAPES = web.AppKey("error_shapes", dict[str, ErrorShape])
# On a response made by error_response: its code and message, for reshaping.
_DETAIL = web.ResponseKey("error_detail", tuple[str, str])
# Headers of a canonical error that a reshaped one keeps.
_KEPT_HEADERS = ("Allow", "Retry-After")


class ApiError(Exception):
    """Base: a client-visible failure with an HTTP status and a snake_case code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.fields = fields


class BadRequest(ApiError):
    """The request is malformed (not JSON, bad header)."""


class Unauthorized(ApiError):
    """No credentials, or credentials that do not authenticate."""

    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """Authenticated, but not allowed to do this."""

    status = 403
    code = "forbidden"


class NotFound(ApiError):
    """The addressed resource does not exist (or is not visible to the caller)."""

    status = 404
    code = "not_found"


class Conflict(ApiError):
    """The request conflicts with the current state."""

    status = 409
    code = "conflict"


class StoreUnavailable(ApiError):
    """A store cannot answer right now; retryable."""

    status = 503
    code = "store_unavailable"


class Unprocessable(ApiError):
    """Well-formed JSON with values that are not acceptable; the message names the field."""

    status = 422
    code = "invalid_request"


# Failures to reach a store (not programming errors): answered 503, retryable.
_STORE_ERRORS = (
    ConnectionError,  # refused, reset
    TimeoutError,  # connect, query or pool-acquire timeout
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    # The server is shutting down (a stopped or crashed primary): a query in flight gets
    # 57P01/57P02; a pooled connection that already read the server's goodbye but not yet
    # its closed socket refuses the next query with asyncpg's InternalClientError ("cannot
    # switch to state …; another operation (2) is in progress"), and the transaction around
    # it then cannot end on a closed connection (InterfaceError, as the gateway counts it).
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,
    asyncpg.InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
    RedisError,  # OOM, READONLY after a failover, BUSY: Redis cannot take it now
)
# InterfaceErrors that are asyncpg telling us of our own mistake, not of a store gone away:
# a 500 (a bug to fix), never "retry later". (Its DataError — a value asyncpg cannot send —
# is answered 422 with PostgreSQL's own.)
_CLIENT_MISTAKES = (asyncpg.ClientConfigurationError, asyncpg.UnsupportedClientFeatureError,
                    asyncpg.UnsupportedServerFeatureError)
# Two transactions got in each other's way; the client may simply retry.
_CONFLICTS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def error_response(request_id: str, status: int, code: str, message: str,
                   fields: list[dict[str, str]] | None = None) -> web.Response:
    detail: dict[str, object] = {"code": code, "message": message, "request_id": request_id}
    if fields:
        detail["fields"] = fields
    response = web.Response(status=status, body=orjson.dumps({"error": detail}),
                            content_type="application/json")
    response[_DETAIL] = (code, message)
    return response


def dialect_shape(request: web.Request) -> ErrorShape | None:
    """The error shape of the dialect whose path root the request is under, if any."""
    path = request.path
    shapes = request.app.get(ERROR_SHAPES, {})
    for root, shape in shapes.items():  # the most specific root first (dialects.mount)
        if path == root or path.startswith(root + "/"):
            return shape
    return None


async def _allowed(request: web.Request) -> set[str]:
    """The methods of the route that serves this path (the first that matches, as routing
    picks it), not of every pattern that also matches (``/v1/keys/self`` and ``/{id}``)."""
    for resource in request.app.router.resources():
        _, methods = await resource.resolve(request)
        if methods:
            return set(methods)
    return set()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in the canonical shape — or, under a dialect's paths, in the dialect's."""
    response = await _canonical_errors(request, handler)
    detail = response.get(_DETAIL)
    shape = dialect_shape(request) if detail is not None else None
    if detail is None or shape is None:
        return response
    reshaped = shape(request, response.status, *detail)
    for name in _KEPT_HEADERS:
        if name in response.headers and name not in reshaped.headers:
            reshaped.headers[name] = response.headers[name]
    return reshaped


async def _canonical_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id(request.headers)
    request[REQUEST_ID] = request_id
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(request_id, exc.status, exc.code, exc.message, exc.fields)
    except web.HTTPNotFound:
        return error_response(request_id, 404, "route_not_found",
                              f"no admin route {request.path}; see GET /openapi.json")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(await _allowed(request) or exc.allowed_methods))
        response = error_response(request_id, 405, "method_not_allowed",
                                  f"{request.method} is not allowed on {request.path}; "
                                  f"use {allowed}")
        response.headers["Allow"] = allowed
        return response
    except web.HTTPRequestEntityTooLarge:
        return error_response(request_id, 413, "payload_too_large",
                              "the request body is too large")
    except web.HTTPException as exc:
        return error_response(request_id, exc.status, "http_error", exc.reason)
    except _CONFLICTS:
        return error_response(request_id, 409, "concurrent_update",
                              "another request changed the same data at the same time; retry")
    except (asyncpg.DataError, ArgumentError) as exc:
        # Validation should catch these first; this is the net under it.
        log.warning("value rejected by PostgreSQL", extra={"request_id": request_id,
                                                           "error": type(exc).__name__})
        return error_response(request_id, 422, "invalid_value",
                              "a value in the request cannot be stored (out of range or "
                              "containing NUL characters); correct it and retry")
    except _CLIENT_MISTAKES:
        log.exception("unhandled error", extra={"request_id": request_id})
        return error_response(request_id, 500, "internal_error",
                              f"unexpected server error; quote request id {request_id}")
    except _STORE_ERRORS as exc:
        store = "Redis" if type(exc).__module__.startswith("redis") else "PostgreSQL"
        log.warning("%s unavailable (%s), request %s", store, type(exc).__name__, request_id)
        return error_response(request_id, 503, "store_unavailable",
                              f"{store} is unavailable, so this cannot be done right now; "
                              "retry later")
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        return error_response(request_id, 500, "internal_error",
                              f"unexpected server error; quote request id {request_id}")


async def add_standard_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every admin response is private and traceable."""
    response.headers["Cache-Control"] = "no-store"
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id
