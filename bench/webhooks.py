"""How fast webhook events reach a receiver, and what a backlog costs the senders.

Starts embedded PostgreSQL and Redis, ``--instances`` admin API instances (each with its
sender) and a receiver in this process, all on 127.0.0.1. Then:

1. **Throughput and latency:** ``--events`` events about ``--keys`` keys are queued, in
   transactions of ``--batch`` as a usage flush would, while the senders deliver them; the
   receiver answers each after ``--receiver-ms``. Prints events per second and the latency
   from an event's creation to its arrival (p50 / p99 / max), and checks that every event
   arrived, once, in order per key.
2. **Backlog:** ``--backlog`` deliveries queued for an endpoint that is down (one key's
   worth behind every head), then the time of one claim, as every sender runs it on every
   poll and wake-up.
3. **Expiry scan:** ``--expiring`` keys expiring evenly over the next 30 days (a 30-day
   expiry policy: about a quarter are inside the default 7-day warning). Prints how long
   the first announcement of their warnings takes, and then one scan round when nothing is
   left to announce, as every admin instance runs it each ``scan_interval_s`` (30 s).

    .venv/bin/python bench/webhooks.py [--events 2000] [--keys 100] [--instances 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from admin_api.app import create_app as create_admin_app
from admin_api.migrate import migrate
from admin_api.webhooks import delivery, expiry
from gateway import events
from gateway.database import connect
from gateway.keyformat import new_id
from gateway.settings import AdminSettings, Settings, WebhookSettings
from keystile.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

TOKEN = "bench-operator-token-0123456789"


class Receiver:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.done = asyncio.Event()
        self.expected = 0

    async def handle(self, request: web.Request) -> web.Response:
        event = orjson.loads(await request.read())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.arrivals.append((time.time(), event))
        if len(self.arrivals) >= self.expected:
            self.done.set()
        return web.Response(status=204)


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _endpoint(conn: asyncpg.Connection, org_id: str, url: str) -> str:
    endpoint_id = new_id("whk")
    await conn.execute(
        "INSERT INTO webhook_endpoints (id, org_id, url, events, secret, secret_sealed) "
        "VALUES ($1, $2, $3, $4, $5, false)", endpoint_id, org_id, url, list(events.TYPES),
        b"whsec_bench")
    return endpoint_id


async def _queue(conn: asyncpg.Connection, org_id: str, keys: list[str], n: int,
                 batch: int) -> None:
    for start in range(0, n, batch):
        async with conn.transaction():
            for i in range(start, min(n, start + batch)):
                key_id = keys[i % len(keys)]
                await events.record(conn, events.USAGE_THRESHOLD, org_id,
                                    {"id": key_id, "owner_id": None, "name": "", "prefix": ""},
                                    {"seq": i})


async def _expiry(conn: asyncpg.Connection, org_id: str, n: int) -> bool:
    """The expiry phase; False if a round after the first announcement found more."""
    await conn.execute(
        "INSERT INTO keys (id, org_id, owner_id, name, prefix, key_prefix, expires_at) "
        "SELECT 'key_exp' || g, $1, 'owner' || (g % 1000), 'k', 'bk_xxxxxxxxx', 'bk', "
        "now() + (g::float / $2) * interval '30 days' FROM generate_series(1, $2) g",
        org_id, n)
    await conn.execute("ANALYZE keys")
    began, announced = time.perf_counter(), 0
    while (found := await expiry.scan(conn)) is not None:
        announced += found
        if found < expiry.BATCH:
            break
    first_s = time.perf_counter() - began
    await conn.execute("ANALYZE")
    rounds, again = [], 0
    for _ in range(10):
        began = time.perf_counter()
        again += await expiry.scan(conn) or 0
        rounds.append(time.perf_counter() - began)
    print(f"expiry: {n} keys expiring over 30 days; {announced} warnings announced in "
          f"{first_s:.1f} s ({announced / first_s:.0f}/s); then a round with nothing left: "
          f"{_percentiles(rounds)}; announced again: {again}")
    return again == 0


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms")


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="keystile-bench-webhooks-") as tmp:
        pg, redis = EmbeddedPostgres(Path(tmp) / "pg"), EmbeddedRedis(Path(tmp) / "redis")
        pg.start()
        redis.start()
        runners: list[web.AppRunner] = []
        try:
            conn = await connect(pg.url)
            await migrate(conn)
            org_id = new_id("org")
            await conn.execute("INSERT INTO orgs (id, name, provider_id, key_prefix) "
                               "VALUES ($1, 'bench', 'bench', 'bk')", org_id)
            receiver = Receiver(args.receiver_ms / 1000)
            receiver.expected = args.events
            app = web.Application()
            app.router.add_post("/hooks", receiver.handle)
            port = free_port()
            runners.append(await _serve(app, port))
            await _endpoint(conn, org_id, f"http://127.0.0.1:{port}/hooks")
            settings = Settings(database_url=pg.url, redis_url=redis.url,
                                admin=AdminSettings(token=TOKEN),
                                webhooks=WebhookSettings(allow_private_addresses=True))
            for _ in range(args.instances):
                runners.append(await _serve(create_admin_app(settings), free_port()))
            keys = [f"key_bench{i:05d}" for i in range(args.keys)]

            started = time.time()
            await _queue(conn, org_id, keys, args.events, args.batch)
            queued = time.time()
            await asyncio.wait_for(receiver.done.wait(), args.timeout)
            finished = time.time()
            latencies = [at - datetime.fromisoformat(e["created_at"]).timestamp()
                         for at, e in receiver.arrivals]
            per_key: dict[str, list[int]] = defaultdict(list)
            for _, event in receiver.arrivals:
                per_key[event["key"]["id"]].append(event["data"]["seq"])
            in_order = all(seqs == sorted(seqs) for seqs in per_key.values())
            unique = len({e["id"] for _, e in receiver.arrivals})
            print(f"{args.events} events about {args.keys} keys, {args.instances} admin "
                  f"instance(s), receiver answering in {args.receiver_ms} ms:")
            print(f"  queued in {queued - started:.2f} s "
                  f"({args.events / (queued - started):.0f} events/s, {args.batch} a "
                  "transaction)")
            print(f"  all delivered {finished - started:.2f} s after the first was queued: "
                  f"{args.events / (finished - started):.0f} events/s")
            print(f"  creation to arrival: {_percentiles(latencies)}")
            print(f"  arrived {len(receiver.arrivals)}, distinct {unique}, "
                  f"in order per key: {in_order}")

            # A backlog behind an endpoint that is down, then one claim.
            await conn.execute("UPDATE webhook_endpoints SET url = 'http://127.0.0.1:9/'")
            for runner in runners[1:]:
                await runner.cleanup()  # the senders stop: the claim is timed alone
            del runners[1:]
            backlog_started = time.time()
            await _queue(conn, org_id, keys, args.backlog, 500)
            backlog_s = time.time() - backlog_started
            claims = []
            for _ in range(20):  # each claim rolled back, so every one finds the same work
                claim = conn.transaction()
                await claim.start()
                began = time.perf_counter()
                await conn.fetch(delivery.CLAIM, 32, 60.0, 16)
                claims.append(time.perf_counter() - began)
                await claim.rollback()
            waiting = await conn.fetchval("SELECT count(*) FROM webhook_deliveries "
                                          "WHERE state = 'pending'")
            print(f"backlog: {waiting} pending deliveries ({args.backlog} queued in "
                  f"{backlog_s:.1f} s) behind {args.keys} heads; one claim of 32: "
                  f"{_percentiles(claims)}")
            expiry_ok = await _expiry(conn, org_id, args.expiring)
            await conn.close()
            ok = len(receiver.arrivals) == unique == args.events and in_order and expiry_ok
            return 0 if ok else 1
        finally:
            for runner in reversed(runners):
                await runner.cleanup()
            redis.stop()
            pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--receiver-ms", type=float, default=5.0)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--expiring", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=300.0)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
