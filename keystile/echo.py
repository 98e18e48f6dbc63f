"""The demo upstream: answers every request with what it received, as JSON."""

from __future__ import annotations

import orjson
from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    path, _, query = request.raw_path.partition("?")
    headers: dict[str, str] = {}
    for istr_name, value in request.headers.items():
        name = str(istr_name)  # orjson wants exact str keys
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    body = await request.read()
    return web.Response(
        body=orjson.dumps({
            "method": request.method,
            "path": path,
            "query": query,
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
        }),
        content_type="application/json",
    )


def create_app() -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
