"""KC, the benchmark's Redis Cluster setup: ONE organisation with many keys (10,000 in the
full run) behind Keystile in exact mode on a real cluster of three masters and three replicas
(``keystile.embedded.EmbeddedRedisCluster``).

Every limit state of one organisation carries the organisation as hash tag (``ks:{org}…``),
so the whole organisation lives in one slot, on one master: this setup measures what that
one master does for a large organisation (``spread``), and that the limits stay exact there
(``check``): a few of the organisation's keys have a small lifetime ``usage_limit``; after
the load run each gets a burst of twice its limit, and the bench counts what its upstream
received for each of them (an nginx whose access log lists the key id Keystile forwards, for
those keys only), the 200s and 429s of the burst, and ``usage_count`` in PostgreSQL once the
usage is written behind. Correct means: exactly ``usage_limit`` reached the upstream and is in
PostgreSQL, and the burst met the limit (429s)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from admin_api.migrate import migrate
from bench.seed import QUOTA, add_org, insert_key_rows
from gateway.database import connect
from keystile.embedded import EmbeddedRedisCluster

ORG = "org_clusterbenchAAAAAAAAAA"  # not the other setups' organisation: a slot of its own
LIMITED = 5  # keys of the organisation with a small lifetime limit
USAGE_LIMIT = 50
BURST = 2 * USAGE_LIMIT  # requests per limited key after the load run, all at once
FLUSH_DEADLINE_S = 15.0  # usage is written behind every usage_flush_interval_s (1 s)


@dataclass
class ClusterOrg:
    keys: list[str]  # every raw key of the organisation, the limited ones among them
    limited: dict[str, str]  # key id -> raw key, the keys with usage_limit = USAGE_LIMIT


async def seed(pg_url: str, count: int) -> ClusterOrg:
    """The organisation and its ``count`` keys: ``LIMITED`` of them with the small lifetime
    limit, the others with the bench key's loose limits."""
    conn = await connect(pg_url)
    try:
        await migrate(conn)
        await add_org(conn, ORG)
        loose = await insert_key_rows(conn, count - LIMITED, QUOTA, ORG)
        limited = await insert_key_rows(conn, LIMITED, QUOTA, ORG, USAGE_LIMIT)
    finally:
        await conn.close()
    return ClusterOrg([raw for _, raw in loose + limited], dict(limited))


def upstream_config(work: Path, org: ClusterOrg) -> tuple[str, str, Path]:
    """nginx ``http`` and ``server`` blocks of KC's upstream — 200 to everything, as B0 — that
    log the key id Keystile forwards (``X-Keystile-Key-Id``) for the limited keys only; and
    the log's path."""
    log = work / "kc-upstream.log"
    entries = "\n".join(f'    "{key_id}" 1;' for key_id in org.limited)
    http = ("log_format keyid '$http_x_keystile_key_id';\n"
            f"  map $http_x_keystile_key_id $limited_key {{\n    default 0;\n{entries}\n  }}")
    server = f"access_log {log} keyid if=$limited_key; location / {{ return 200 'ok'; }}"
    return http, server, log


def master_urls(cluster: EmbeddedRedisCluster) -> dict[int, str]:
    """Port -> URL of each master (a plain client: INFO, SCAN and MEMORY USAGE of that node)."""
    return {port: f"redis://127.0.0.1:{port}/0" for port in sorted(cluster.masters())}


def org_master(cluster: EmbeddedRedisCluster) -> int:
    """The master serving the organisation's slot."""
    return cluster.master_of(f"ks:{{{ORG}}}:")


def slot_counts(cluster: EmbeddedRedisCluster) -> dict[int, int]:
    counts: dict[int, int] = {}
    for port, ranges in cluster.masters().items():
        counts[port] = sum(int(high or low) - int(low) + 1
                           for low, _, high in (r.partition("-") for r in ranges
                                                if not r.startswith("[")))
    return counts


async def _burst(port: int, keys: dict[str, str]) -> dict[str, Counter[int]]:
    """``BURST`` concurrent requests on each of ``keys`` (all keys at once); key id ->
    statuses."""
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(raw: str) -> int:
            async with session.get(f"http://127.0.0.1:{port}/svc/item",
                                   headers={"X-API-Key": raw}) as response:
                await response.read()
                return response.status

        ids = [key_id for key_id in keys for _ in range(BURST)]
        statuses = await asyncio.gather(*(one(keys[key_id]) for key_id in ids))
    out: dict[str, Counter[int]] = {key_id: Counter() for key_id in keys}
    for key_id, status in zip(ids, statuses, strict=True):
        out[key_id][status] += 1
    return out


async def _usage(pg_url: str, key_ids: list[str]) -> dict[str, int]:
    """``usage_count`` in PostgreSQL, polled until every key shows at least ``USAGE_LIMIT``
    (the usage written behind has arrived) or ``FLUSH_DEADLINE_S`` passed."""
    conn = await connect(pg_url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FLUSH_DEADLINE_S
        while True:
            rows = await conn.fetch("SELECT id, usage_count FROM keys WHERE id = ANY($1)",
                                    key_ids)
            usage = {row["id"]: int(row["usage_count"]) for row in rows}
            if all(n >= USAGE_LIMIT for n in usage.values()) or loop.time() > deadline:
                return usage
            await asyncio.sleep(0.1)  # polling PostgreSQL, not standing in for a signal
    finally:
        await conn.close()


def _received(log: Path) -> Counter[str]:
    """Requests the upstream received, per limited key id."""
    return Counter(line.strip() for line in log.read_text().splitlines() if line.strip())


def exact(received: int, usage_count: int | None, burst: Counter[int],
          limit: int = USAGE_LIMIT) -> bool:
    """One limited key's verdict: exactly ``limit`` requests reached the upstream, PostgreSQL
    counts the same, and the burst did meet the limit (429s) with nothing but 200s and 429s."""
    others = sum(n for status, n in burst.items() if status not in (200, 429))
    return received == usage_count == limit and burst[429] > 0 and others == 0


async def check(pg_url: str, port: int, org: ClusterOrg, log: Path) -> dict[str, Any]:
    """The burst on the limited keys, then what reached the upstream and PostgreSQL."""
    burst = await _burst(port, org.limited)
    usage = await _usage(pg_url, list(org.limited))
    received = _received(log)  # written when each request ended: before the usage flush
    keys: list[dict[str, Any]] = []
    correct = True
    for key_id in org.limited:
        statuses = burst[key_id]
        other = sum(n for status, n in statuses.items() if status not in (200, 429))
        keys.append({"key_id": key_id, "usage_limit": USAGE_LIMIT,
                     "upstream_received": received[key_id],
                     "pg_usage_count": usage.get(key_id), "burst_200": statuses[200],
                     "burst_429": statuses[429], "burst_other": other})
        correct = correct and exact(received[key_id], usage.get(key_id), statuses)
    return {"correct": correct,
            "correctness": {"limited_keys": len(keys), "usage_limit": USAGE_LIMIT,
                            "burst_per_key": BURST, "keys": keys}}


def spread(per_master: dict[int, dict[str, Any]], slots: dict[int, int], home: int
           ) -> list[dict[str, Any]]:
    """The per-master figures as a list, the organisation's master marked."""
    return [{"port": port, "slots": slots.get(port), "serves_org": port == home, **figures}
            for port, figures in sorted(per_master.items())]

