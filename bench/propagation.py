"""How fast key changes reach every gateway worker.

Starts embedded PostgreSQL and Redis, the admin API and an upstream in this process, and
``keystile gateway --workers N`` as a child. Keep-alive connections are mapped to the worker
that serves them (through the access log), then 200 times: a fresh key is used on every
connection, the admin API revokes, pauses, rotates or rescopes it, and every connection asks
again and again until it is refused. The delay is from the admin response to the refusal by
the last worker. Prints p50 / p99 / max and writes bench/results/propagation.json. Beside
it, the same measure for a request with nothing to propagate (a valid key asked on every
connection just before each change): what the load's queueing alone costs.

By default the workers are kept busy meanwhile: a child process keeps ``--load`` concurrent
requests (of another, rate-limited key) going against the gateway, as a busy production
gateway would be, and the revocations' delays are reported on their own as well
(``--load 0`` measures an idle gateway).

    .venv/bin/python bench/propagation.py [--changes 200] [--workers 2] [--load 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from admin_api.app import create_app as create_admin_app
from admin_api.migrate import migrate
from gateway.database import connect
from gateway.settings import AdminSettings, Settings
from keystile.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

TOKEN = "bench-operator-token-0123456789"
CONNECTIONS = 8
ACTIONS = ("revoke", "pause", "rotate", "rescope")
RESULTS = Path(__file__).parent / "results"


def _pump(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


async def _upstream() -> tuple[web.AppRunner, int]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def _load(url: str, raw_key: str, concurrency: int) -> None:
    """Runs in a child process until killed: ``concurrency`` requests in flight at all times."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def loop() -> None:
            while True:
                try:
                    await _get(s, url, raw_key)
                except aiohttp.ClientError:
                    await asyncio.sleep(0.01)
        await asyncio.gather(*(loop() for _ in range(concurrency)))


def _percentiles(delays: list[float]) -> dict[str, float]:
    ms = sorted(d * 1000 for d in delays)
    return {"p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[max(int(len(ms) * 0.99) - 1, 0)], 2),
            "max_ms": round(ms[-1], 2)}


async def _get(session: aiohttp.ClientSession, url: str, raw_key: str) -> int:
    async with session.get(url, headers={"X-API-Key": raw_key}) as resp:
        await resp.read()
        return resp.status


async def _timed_get(session: aiohttp.ClientSession, url: str, raw_key: str,
                     started: float) -> tuple[int, float]:
    status = await _get(session, url, raw_key)
    return status, time.perf_counter() - started


async def _until_refused(session: aiohttp.ClientSession, url: str, raw_key: str,
                         changed: float) -> float:
    """Seconds from ``changed`` until this connection's worker refuses the key."""
    while (status := await _get(session, url, raw_key)) == 200:
        if time.perf_counter() - changed > 5:
            raise RuntimeError("a key change was not honoured within 5 s")
    if status not in (401, 403):  # a refusal for the key, not a failure of the gateway
        raise RuntimeError(f"expected 401 or 403 after the change, got {status}")
    return time.perf_counter() - changed


def _worker_of(lines: queue.Queue[str], request_id: str, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if " keystile.access " in line and request_id in line:
            return int(json.loads(line.split(" keystile.access ", 1)[1])["worker"])
    raise RuntimeError(f"no access log line for {request_id}")


async def run(changes: int, workers: int, load: int = 32) -> dict[str, object]:
    data = Path(tempfile.mkdtemp(prefix="keystile-bench-"))
    pg = EmbeddedPostgres(data / "pg", durable=False).start()
    redis = EmbeddedRedis(data / "redis", durable=False).start()
    gateway_proc = loader = None
    runners: list[web.AppRunner] = []
    try:
        conn = await connect(pg.url)
        await migrate(conn)
        await conn.close()
        up_runner, up_port = await _upstream()
        runners.append(up_runner)
        settings = Settings(database_url=pg.url, redis_url=redis.url,
                            admin=AdminSettings(token=TOKEN))
        admin_runner = web.AppRunner(create_admin_app(settings), access_log=None)
        await admin_runner.setup()
        admin_port = free_port()
        await web.TCPSite(admin_runner, "127.0.0.1", admin_port).start()
        runners.append(admin_runner)
        gw_port = free_port()
        config = data / "gateway.toml"
        config.write_text(f'[gateway]\nport = {gw_port}\n\n[[routes]]\nprefix = "/svc"\n'
                          f'upstream = "http://127.0.0.1:{up_port}"\n'
                          f'scopes = {{ GET = ["svc:read"] }}\n')
        env = {**os.environ, "KEYSTILE_DATABASE_URL": pg.url, "KEYSTILE_REDIS_URL": redis.url}
        gateway_proc = subprocess.Popen(
            [sys.executable, "-m", "keystile.cli", "gateway", "--config", str(config),
             "--workers", str(workers)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(gateway_proc.stdout, lines), daemon=True).start()
        while "listening on" not in lines.get(timeout=60):
            pass

        admin = aiohttp.ClientSession(f"http://127.0.0.1:{admin_port}",
                                      headers={"Authorization": f"Bearer {TOKEN}"})
        org = await (await admin.post("/v1/orgs", json={"name": "bench",
                                                         "provider_id": "bench"})).json()
        # One keep-alive connection per session; map each to the worker serving it.
        sessions: list[aiohttp.ClientSession] = []
        served_by: set[int] = set()
        probe = await (await admin.post("/v1/keys", json={"org_id": org["id"],
                                                          "scopes": ["svc:read"]})).json()
        while len(sessions) < CONNECTIONS or len(served_by) < workers:
            s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            rid = f"map-{len(sessions)}"
            async with s.get(f"http://127.0.0.1:{gw_port}/svc/x",
                             headers={"X-API-Key": probe["key"], "X-Request-Id": rid}) as r:
                await r.read()
            served_by.add(await asyncio.to_thread(_worker_of, lines, rid))
            sessions.append(s)
            if len(sessions) > 64:
                raise RuntimeError("could not reach every worker")

        if load:
            busy = await (await admin.post("/v1/keys", json={
                "org_id": org["id"], "scopes": ["svc:read"],
                "rate_limits": [{"limit": 100_000_000, "window_s": 60}]})).json()
            loader = subprocess.Popen(
                [sys.executable, __file__, "--load-only", f"http://127.0.0.1:{gw_port}/svc/x",
                 busy["key"], str(load)], stdin=subprocess.DEVNULL)
            await asyncio.sleep(2)  # the load is under way (and the workers warm)

        delays: list[float] = []
        revocations: list[float] = []
        baseline: list[float] = []
        for i in range(changes):
            key = await (await admin.post("/v1/keys", json={
                "org_id": org["id"], "scopes": ["svc:read"]})).json()
            url, raw = f"http://127.0.0.1:{gw_port}/svc/x", key["key"]
            started = time.perf_counter()
            answers = await asyncio.gather(*(_timed_get(s, url, raw, started) for s in sessions))
            assert all(st == 200 for st, _ in answers)
            # The same measure as a change's delay (the slowest connection's answer), for a
            # request with nothing to propagate: how much of the delay is the load's queueing.
            baseline.append(max(elapsed for _, elapsed in answers))
            action = ACTIONS[i % len(ACTIONS)]
            if action == "rescope":
                resp = await admin.patch(f"/v1/keys/{key['id']}", json={"scopes": ["other:x"]})
            else:
                resp = await admin.post(f"/v1/keys/{key['id']}/{action}", json={})
            await resp.read()
            changed = time.perf_counter()
            delays.append(max(await asyncio.gather(
                *(_until_refused(s, url, raw, changed) for s in sessions))))
            if action == "revoke":
                revocations.append(delays[-1])
        for s in sessions:
            await s.close()
        await admin.close()
    finally:
        if loader is not None:
            loader.kill()
            loader.wait(30)
        if gateway_proc is not None:
            gateway_proc.terminate()
            try:
                gateway_proc.wait(30)
            except subprocess.TimeoutExpired:
                gateway_proc.kill()
                gateway_proc.wait(30)
        for runner in runners:
            await runner.cleanup()
        redis.stop()
        pg.stop()
    return {"changes": changes, "workers": workers, "connections": len(sessions),
            "load_concurrency": load, **_percentiles(delays),
            "revocations": {"count": len(revocations), **_percentiles(revocations)},
            "plain_requests": _percentiles(baseline)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--load", type=int, default=32,
                        help="requests kept in flight against the gateway meanwhile (0: idle)")
    parser.add_argument("--load-only", nargs=3, metavar=("URL", "KEY", "CONCURRENCY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_only:
        url, key, concurrency = args.load_only
        asyncio.run(_load(url, key, int(concurrency)))
        return
    result = asyncio.run(run(args.changes, args.workers, args.load))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "propagation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"key change propagation over {result['changes']} changes, {result['workers']} "
          f"workers: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"max {result['max_ms']} ms; with {result['load_concurrency']} requests in flight")
    revoked = result["revocations"]
    assert isinstance(revoked, dict)
    print(f"revocations ({revoked['count']}): p50 {revoked['p50_ms']} ms, "
          f"p99 {revoked['p99_ms']} ms, max {revoked['max_ms']} ms")
    plain = result["plain_requests"]
    assert isinstance(plain, dict)
    print(f"a valid key's request under the same load, answered on every connection: "
          f"p50 {plain['p50_ms']} ms, p99 {plain['p99_ms']} ms, max {plain['max_ms']} ms")


if __name__ == "__main__":
    main()
