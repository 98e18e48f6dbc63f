"""B3: the bare aiohttp pass-through proxy the gateway is measured against — same streaming
forward, no checks. ``python bench/bareproxy.py PORT UPSTREAM [PROCESSES]``"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import web


def serve(port: int, upstream: str) -> None:
    import uvloop

    from gateway.supervision import die_with_parent

    die_with_parent(signal.SIGTERM)
    async def main() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        auto_decompress=False)

        async def forward(request: web.Request) -> web.StreamResponse:
            async with session.request(request.method, upstream + request.raw_path,
                                       data=request.content if request.body_exists else None,
                                       allow_redirects=False) as up:
                response = web.StreamResponse(status=up.status)
                await response.prepare(request)
                async for chunk in up.content.iter_chunked(65536):
                    await response.write(chunk)
                await response.write_eof()
                return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
        await asyncio.Event().wait()

    uvloop.run(main())


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    procs = [multiprocessing.Process(target=serve, args=(port, upstream), daemon=True)
             for _ in range(count)]
    for proc in procs:
        proc.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # children follow (PDEATHSIG)
    for proc in procs:
        proc.join()
