"""One JSON line per admin request: who did what, how it ended. Never a header value, so
never a key or token."""

from __future__ import annotations

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from admin_api.auth import PRINCIPAL
from gateway.keyformat import redact


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        principal = request.get(PRINCIPAL)
        actor = None if principal is None else (principal.key.id if principal.key
                                                else "operator")
        self.logger.info(orjson.dumps({
            "method": request.method,
            "path": redact(request.path),
            "status": response.status,
            "duration_ms": round(time * 1000, 2),
            "request_id": response.headers.get("X-Request-Id"),
            "actor": actor,
            "remote": request.remote,
        }).decode())
