"""The upstream of ``keystile cluster``: the demo echo app (keystile/echo.py) that also counts
what it received per key — the gateway forwards the key's id as ``X-Keystile-Key-Id`` — so a
check can compare what got through with what PostgreSQL counted.

    python -m keystile.cluster_upstream --host 127.0.0.10 --port 9000

``GET /_upstream/counts`` answers ``{"key_id": count, ...}`` (the gateway's routes never
forward there: it is asked directly, like an upstream's own metrics)."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

import orjson
from aiohttp import web

from keystile import echo, serving

KEY_ID_HEADER = "X-Keystile-Key-Id"
COUNTS_PATH = "/_upstream/counts"
COUNTS = web.AppKey("counts", Counter[str])


async def _counted_echo(request: web.Request) -> web.StreamResponse:
    key_id = request.headers.get(KEY_ID_HEADER)
    if key_id:
        # Counted on arrival: a request the gateway let through is here, whatever happens to
        # its answer on the way back.
        counts = request.app[COUNTS]
        counts[key_id] += 1
    return await echo.echo(request)


async def _counts(request: web.Request) -> web.Response:
    counts: Counter[str] = request.app[COUNTS]
    return web.Response(body=orjson.dumps(counts),
                        content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    app[COUNTS] = Counter()
    app.router.add_get(COUNTS_PATH, _counts)  # before the catch-all, which would take it
    app.router.add_route("*", "/{tail:.*}", _counted_echo)
    return app


async def _serve(host: str, port: int) -> None:
    stop = serving.stop_event()
    runners = await serving.start([serving.Listener("upstream", create_app(), host, port)])
    print(f"keystile cluster upstream listening on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await serving.stop(runners)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
