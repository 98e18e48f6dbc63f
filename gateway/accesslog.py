"""One JSON line per proxied request: request id, key id, organisation, route, status, code
and duration. Never a header value, so never a key."""

from __future__ import annotations

import os

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.keyformat import redact
from gateway.state import EXCHANGE


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        ex = response.get(EXCHANGE)
        key = ex.key if ex is not None else None
        self.logger.info(orjson.dumps({
            "request_id": (ex.request_id if ex is not None
                           else response.headers.get("X-Request-Id")),
            "method": request.method,
            "path": redact(ex.path if ex is not None and ex.path
                           else request.raw_path.split("?")[0]),
            "route": ex.route.prefix if ex is not None and ex.route else None,
            "status": response.status,
            "code": ex.error if ex is not None else None,
            "key_id": key.id if key else None,
            "org_id": key.org_id if key else None,
            "duration_ms": round(time * 1000, 2),
            "upstream_ms": (round(ex.upstream_s * 1000, 2)
                            if ex is not None and ex.upstream_s is not None else None),
            "remote": request.remote,
            "worker": os.getpid(),
        }).decode())
