"""What the request history costs: the console's chart and "limited now" queries over a
filled history, and the write a flush adds.

Starts an embedded PostgreSQL, applies the migrations and fills the history as ``--keys``
keys in ``--orgs`` organisations (``--owners`` owners each) would have: each key busy in
``--busy`` of the minutes of the last day and of the hours of the last 30 days, with a
share of 429s. Then, after the statements have been run often enough for PostgreSQL to
settle on its plans, times each query the console makes (p50 / p99 / max over ``--runs``),
one flush's history write for ``--flush-keys`` keys, and what counting one request costs a
gateway worker (the part on the request path).

    .venv/bin/python bench/history.py [--keys 2000] [--orgs 10] [--busy 0.2] [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from admin_api.migrate import migrate
from admin_api.repository import rollups as reading
from gateway import rollups
from gateway.database import connect
from gateway.keyrecord import KeyRecord
from gateway.usage import UsageRecorder
from keystile.embedded import EmbeddedPostgres

# Rows for every busy (key, step): 200s, and 429s for one key in ten.
FILL = """
INSERT INTO {table} (bucket, key_id, org_id, owner_id, status, code, count)
SELECT b, 'key_' || k, 'org_' || (k % $2), 'owner_' || (k % $3), s.status, s.code,
       CASE WHEN s.status = 200 THEN 1 + (random() * 20)::int ELSE 1 + (random() * 5)::int END
FROM generate_series(1, $1) AS k,
     generate_series(date_trunc($5, now()) - $4::text::interval, date_trunc($5, now()),
                     ('1 ' || $5)::interval) AS b,
     (VALUES (200::smallint, ''), (429::smallint, 'rate_limited')) AS s(status, code)
WHERE random() < $6 AND (s.status = 200 OR k % 10 = 0)"""
SUM_ORGS = """
INSERT INTO {orgs} (bucket, org_id, status, code, count)
SELECT bucket, org_id, status, code, sum(count) FROM {keys} GROUP BY 1, 2, 3, 4"""


async def _fill(conn: asyncpg.Connection, args: argparse.Namespace) -> dict[str, int]:
    owners = args.orgs * args.owners
    spans = {rollups.MINUTE_S: ("1 day", "minute"), rollups.HOUR_S: ("30 days", "hour")}
    counted = {}
    for width, (span, unit) in spans.items():
        table = rollups.KEY_TABLES[width]
        await conn.execute(FILL.format(table=table), args.keys, args.orgs, owners, span, unit,
                           args.busy)
        await conn.execute(SUM_ORGS.format(orgs=rollups.ORG_TABLES[width], keys=table))
        for name in (table, rollups.ORG_TABLES[width]):
            counted[name] = await conn.fetchval(f"SELECT count(*) FROM {name}")
    await conn.execute("ANALYZE")
    return counted


async def _time(call: Callable[[], Awaitable[Any]], runs: int) -> list[float]:
    for _ in range(6):  # past the point where PostgreSQL may switch to a generic plan
        await call()
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        took.append((time.perf_counter() - started) * 1000)
    return took


def _line(name: str, took: list[float]) -> str:
    ordered = sorted(took)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (f"{name:<34} p50 {statistics.median(took):7.2f} ms  p99 {p99:7.2f} ms  "
            f"max {max(took):7.2f} ms")


def _record(i: int) -> KeyRecord:
    now = datetime.now(UTC)
    return KeyRecord.from_values({
        "id": f"key_{i}", "serial": i, "org_id": f"org_{i % 10}", "owner_id": f"owner_{i % 100}",
        "name": f"k{i}", "environment": "production", "root": False, "parent_id": None,
        "scopes": [], "status": "active", "expires_at": None, "usage_limit": None,
        "usage_count": 0, "quota": None, "rate_limits": [], "is_default": False, "metadata": {},
        "prefix": "ks_x", "key_prefix": "ks", "recoverable": False, "created_at": now,
        "updated_at": now, "last_used_at": None, "revoked_at": None})


async def _queries(conn: asyncpg.Connection, args: argparse.Namespace) -> list[str]:
    now = datetime.now(UTC)
    key, org = reading.Subject(key_id="key_10"), reading.Subject(org_id="org_0")
    owner = reading.Subject(org_id="org_0", owner_id="owner_0")
    lines = []
    for label, subject, ranges in (("one key", key, ("hour", "day", "30d")),
                                   ("one owner", owner, ("hour", "day", "30d")),
                                   ("one organisation", org, ("hour", "day", "30d")),
                                   ("everything", reading.Subject(), ("hour", "day", "30d"))):
        for name in ranges:
            range_ = reading.RANGES[name]
            since, until = reading.window(range_, now)

            async def call(subject: reading.Subject = subject, range_: reading.Range = range_,
                           since: datetime = since, until: datetime = until) -> Any:
                return await reading.series(conn, subject, range_, since, until)
            lines.append(_line(f"series, {label}, {name}", await _time(call, args.runs)))
    for label, org_id in (("limited now, everything", None), ("limited now, one org", "org_0")):
        async def limited(org_id: str | None = org_id) -> Any:
            return await reading.limited(conn, org_id, 5, 20)
        lines.append(_line(label, await _time(limited, args.runs)))
    return lines


async def _flush_write(conn: asyncpg.Connection, args: argparse.Namespace) -> str:
    """One flush's history: every one of ``--flush-keys`` keys answered this minute, a tenth
    of them refused too — the write a process adds to its usage flush."""
    records = [_record(i) for i in range(args.flush_keys)]
    minute = int(time.time()) // 60

    async def write() -> None:
        history = rollups.History()
        for record in records:
            history.count(record, minute, 200, "")
            if record.serial % 10 == 0:
                history.count(record, minute, 429, "rate_limited")
        async with conn.transaction():
            await history.add(conn)
    took = await _time(write, max(args.runs // 3, 3))
    return _line(f"flush write, {args.flush_keys} keys", took)


def _counting(args: argparse.Namespace) -> str:
    """The request path's share: one ``UsageRecorder.outcome`` per request, over as many
    keys as a flush would hold."""
    records = [_record(i) for i in range(args.flush_keys)]
    recorder = UsageRecorder()
    n = 200_000
    started = time.perf_counter()
    for i in range(n):
        recorder.outcome(records[i % len(records)], 200, "")
    took = time.perf_counter() - started
    return f"counting one request (UsageRecorder.outcome)   {took / n * 1e9:7.0f} ns"


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="keystile-bench-history-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        pg.start()
        try:
            conn = await connect(pg.url)
            try:
                await migrate(conn)
                started = time.perf_counter()
                counted = await _fill(conn, args)
                print(f"history of {args.keys} keys, {args.orgs} organisations, busy "
                      f"{args.busy:.0%} of the time, filled in "
                      f"{time.perf_counter() - started:.1f} s: " +
                      ", ".join(f"{name} {n:,} rows" for name, n in counted.items()))
                for line in await _queries(conn, args):
                    print(line)
                print(await _flush_write(conn, args))
                print(_counting(args))
            finally:
                await conn.close()
        finally:
            pg.stop()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--owners", type=int, default=10, help="per organisation")
    parser.add_argument("--busy", type=float, default=0.2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--flush-keys", type=int, default=2000)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
