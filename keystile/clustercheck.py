"""``keystile cluster-check``: proves on a ``keystile cluster`` topology of its own (free
ports, keystile/cluster.py) what a multi-host deployment promises, with real processes and
measured figures:

1. a key created through the admin API works on every worker of both gateway hosts within
   100 ms (p99);
2. 1,000 concurrent requests split across both hosts against ``usage_limit`` 100: exactly
   100 reach the upstream (counted there) and PostgreSQL's ``usage_count`` ends at 100;
3. a revocation is refused on every worker of both hosts within 100 ms (p99; p50 reported);
4. the Redis master of the organisation's slot killed under load: its replica takes over,
   both hosts keep serving (the gap is measured), and the spends counted across the switch
   match what was served to within the requests in flight;
5. one gateway host killed (SIGKILL, the whole host): the other keeps serving;
6. the PostgreSQL primary stopped: the gateways keep serving known keys, the admin API
   answers 503 ``store_unavailable``, and everything recovers when it returns;
7. nothing over-spent, no usage lost beyond the write-behind bound (what the killed host had
   not flushed: at most ``usage_flush_interval_s`` of its traffic) — counted key by key, the
   upstream's count against PostgreSQL's;
8. through all of it, no host answered 500, logged an error or lost a worker.

Every worker is reached on purpose: keep-alive connections are opened until each worker of a
host has one (the access log names the worker that served a request), and a propagation is
timed from the admin API's answer to the last of those connections agreeing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import resource
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.database import connect
from keystile.cluster import ROUTE, USAGE_FLUSH_INTERVAL_S, Layout, Topology
from keystile.cluster_upstream import COUNTS_PATH

BOUND_MS = 100.0  # a new key, a revocation: honoured on every worker within this
WAIT_S = 10.0  # the longest any single condition is waited for before the check fails
FAILOVER_DEADLINE_S = 30.0
SERVED_AFTER = 50  # successes per host that prove a host serves again


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much each check does (``make cluster-check`` and the test suite: the defaults)."""

    keys: int = 20  # new keys timed (1), and revocations timed (3)
    burst: int = 1000  # concurrent requests against the lifetime limit (2)
    usage_limit: int = 100
    load: int = 16  # requests kept in flight during the failures (4, 5, 6)


@dataclass
class Verdict:
    name: str
    ok: bool
    summary: str  # the measured figures, one line
    figures: dict[str, Any] = field(default_factory=dict)


class CheckFailed(Exception):
    """A condition a check waits for did not come: the check fails with this message."""


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and max in ms; p99 as ``make bench-propagation`` computes it (the sample at
    ``int(n * 0.99) - 1``: of 20, the second slowest)."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[max(int(len(ms) * 0.99) - 1, 0)], 1),
            "max_ms": round(ms[-1], 1)}


def _pct(fig: dict[str, float]) -> str:
    return f"p50 {fig['p50_ms']} ms, p99 {fig['p99_ms']} ms, max {fig['max_ms']} ms"


# --- talking to the topology -------------------------------------------------------------


class Admin:
    """The admin API with the operator token."""

    def __init__(self, top: Topology) -> None:
        self.session = aiohttp.ClientSession(
            top.layout.admin.http, headers={"Authorization": f"Bearer {top.token}"},
            timeout=aiohttp.ClientTimeout(total=30))

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, path, json=body) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.call(method, path, body)
        if status not in (200, 201):
            raise CheckFailed(f"admin {method} {path}: {status} {answer}")
        return answer

    async def key(self, org_id: str, **fields: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self.ok("POST", "/v1/keys", {"org_id": org_id, **fields})
        return answer

    async def close(self) -> None:
        await self.session.close()


async def upstream_counts(top: Topology) -> Counter[str]:
    """Requests the upstream received, per key id."""
    async with aiohttp.ClientSession() as session, \
            session.get(top.layout.upstream.http + COUNTS_PATH) as resp:
        return Counter(orjson.loads(await resp.read()))


async def usage_counts(top: Topology, key_ids: list[str]) -> dict[str, int]:
    """``usage_count`` in the primary."""
    conn = await connect(top.database_url)
    try:
        rows = await conn.fetch("SELECT id, usage_count FROM keys WHERE id = ANY($1)", key_ids)
    finally:
        await conn.close()
    return {row["id"]: int(row["usage_count"]) for row in rows}


async def until(what: str, condition: Callable[[], Awaitable[bool]],
                timeout: float = WAIT_S) -> float:
    """Polls ``condition`` until it holds (the seconds it took), or fails the check."""
    started = time.perf_counter()
    while not await condition():
        if time.perf_counter() - started > timeout:
            raise CheckFailed(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.02)  # polling another process's state: no event to wait on
    return time.perf_counter() - started


class AccessLog:
    """A gateway host's log, read as it grows: request id -> the worker that served it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.workers: dict[str, int] = {}

    def _read(self) -> None:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        end = chunk.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += end
        for line in chunk[:end].splitlines():
            _, marker, entry = line.partition(b" keystile.access ")
            if marker:
                record = orjson.loads(entry)
                if record.get("request_id"):
                    self.workers[record["request_id"]] = int(record["worker"])

    async def worker_of(self, request_id: str) -> int:
        async def logged() -> bool:
            self._read()
            return request_id in self.workers
        await until(f"access log line of {request_id}", logged, timeout=5)
        return self.workers[request_id]


@dataclass
class Probe:
    """One keep-alive connection to one worker of one gateway host."""

    host: str
    worker: int
    base: str
    session: aiohttp.ClientSession

    async def status(self, raw_key: str, path: str = "/probe") -> int:
        async with self.session.get(f"{self.base}{ROUTE}{path}",
                                    headers={"X-API-Key": raw_key}) as resp:
            await resp.read()
            return resp.status

    async def json(self, path: str, raw_key: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.base}{path}", headers={"X-API-Key": raw_key}) as resp:
            return resp.status, orjson.loads(await resp.read())


async def probes_for(top: Topology, host: str) -> list[Probe]:
    """A keep-alive connection to each worker of ``host`` (the kernel spreads connections
    over the workers; the access log says which worker got which)."""
    gateway = next(g for g in top.layout.gateways if g.host == host)
    log = AccessLog(top.gateways[host].log)
    probes: dict[int, Probe] = {}
    for attempt in range(64):
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=3600),
            timeout=aiohttp.ClientTimeout(total=WAIT_S))
        rid = f"cluster-check-{host}-{attempt}-{time.monotonic_ns()}"
        async with session.get(f"{gateway.http}{ROUTE}/", headers={"X-Request-Id": rid}) as r:
            await r.read()  # 401: no key; the access log still names the worker
        worker = await log.worker_of(rid)
        if worker in probes:
            await session.close()
        else:
            probes[worker] = Probe(host, worker, gateway.http, session)
        if len(probes) == top.layout.workers:
            return list(probes.values())
    for probe in probes.values():
        await probe.session.close()
    raise CheckFailed(f"could not reach every worker of {host} in 64 connections")


class Probes:
    """A connection to every worker of every gateway host."""

    def __init__(self, top: Topology) -> None:
        self.top = top
        self.by_host: dict[str, list[Probe]] = {}

    async def connect(self, host: str | None = None) -> None:
        for gw in self.top.layout.gateways:
            if host is None or gw.host == host:
                for old in self.by_host.pop(gw.host, []):
                    await old.session.close()
                self.by_host[gw.host] = await probes_for(self.top, gw.host)

    @property
    def all(self) -> list[Probe]:
        return [p for probes in self.by_host.values() for p in probes]

    async def until_all(self, raw_key: str, wanted: set[int], since: float,
                        timeout: float = 5.0) -> float:
        """Seconds from ``since`` until every worker answers a status in ``wanted``."""
        async def one(probe: Probe) -> float:
            while (status := await probe.status(raw_key)) not in wanted:
                if time.perf_counter() - since > timeout:
                    raise CheckFailed(f"worker {probe.worker} of {probe.host} still answers "
                                      f"{status}, not {sorted(wanted)}, after {timeout:.0f} s")
            return time.perf_counter() - since
        return max(await asyncio.gather(*(one(p) for p in self.all)))

    async def statuses(self, raw_key: str) -> Counter[int]:
        return Counter(await asyncio.gather(*(p.status(raw_key) for p in self.all)))

    async def close(self) -> None:
        for probe in self.all:
            await probe.session.close()
        self.by_host.clear()


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float
    ended: float
    host: str
    status: int  # 0: no HTTP answer (refused, reset)
    code: str  # the error code of a refusal, or the exception of a failure


class Load:
    """``concurrency`` clients, half on each gateway host, asking with one key until
    stopped; every answer recorded."""

    def __init__(self, top: Topology, raw_key: str, concurrency: int,
                 hosts: list[str] | None = None, *, new_connections: bool = False) -> None:
        self.top = top
        # A keep-alive connection stays with the worker that accepted it; a new connection
        # per request spreads the load over every worker of a host.
        self.new_connections = new_connections
        self.raw_key = raw_key
        self.hosts = hosts or [g.host for g in top.layout.gateways]
        self.concurrency = concurrency
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sessions: list[aiohttp.ClientSession] = []

    async def __aenter__(self) -> Load:
        for i in range(self.concurrency):
            host = self.hosts[i % len(self.hosts)]
            gateway = next(g for g in self.top.layout.gateways if g.host == host)
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=self.new_connections),
                timeout=aiohttp.ClientTimeout(total=WAIT_S))
            self._sessions.append(session)
            self._tasks.append(asyncio.create_task(self._client(session, gateway.http, host)))
        return self

    async def _client(self, session: aiohttp.ClientSession, base: str, host: str) -> None:
        url = f"{base}{ROUTE}/load"
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                async with session.get(url, headers={"X-API-Key": self.raw_key}) as resp:
                    body = await resp.read()
                    code = ""
                    if resp.status != 200:
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            code = orjson.loads(body)["error"]["code"]
                    self.outcomes.append(Outcome(started, time.perf_counter(), host,
                                                 resp.status, code))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.outcomes.append(Outcome(started, time.perf_counter(), host, 0,
                                             type(exc).__name__))
                await asyncio.sleep(0.01)  # a refused connection answers at once: no spin

    def served(self, host: str, after: float = 0.0) -> int:
        return sum(1 for o in self.outcomes if o.host == host and o.status == 200
                   and o.ended > after)

    async def __aexit__(self, *exc: object) -> None:
        # Each client finishes the request it is in: none is abandoned half-way (the
        # gateway would count it as a client that left).
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in self._sessions:
            await session.close()


def longest_gap(outcomes: list[Outcome], host: str, since: float, until_: float) -> float:
    """The longest time ``host`` went without a success between ``since`` and ``until_``."""
    served = sorted(o.ended for o in outcomes if o.host == host and o.status == 200
                    and since <= o.ended <= until_)
    marks = [since, *served, until_]
    return max(b - a for a, b in itertools.pairwise(marks))


# --- the checks --------------------------------------------------------------------------


@dataclass
class Run:
    top: Topology
    sizes: Sizes
    admin: Admin
    probes: Probes
    org_id: str
    limits: dict[str, int] = field(default_factory=dict)  # key id -> usage_limit it had
    keys: list[str] = field(default_factory=list)  # every key id the checks used
    # Start times of the requests sent to the gateway host that was killed, and when.
    victim_starts: list[float] = field(default_factory=list)
    killed_at: float = 0.0

    async def key(self, **fields: Any) -> dict[str, Any]:
        key = await self.admin.key(self.org_id, **fields)
        self.keys.append(key["id"])
        if fields.get("usage_limit") is not None:
            self.limits[key["id"]] = int(fields["usage_limit"])
        return key


async def check_new_key(run: Run) -> Verdict:
    delays = []
    for _ in range(run.sizes.keys):
        key = await run.key()
        created = time.perf_counter()
        delays.append(await run.probes.until_all(key["key"], {200}, created))
    fig = {"keys": len(delays), "workers": len(run.probes.all), **percentiles(delays)}
    return Verdict("new key works on every worker of both hosts", fig["p99_ms"] <= BOUND_MS,
                   f"{_pct(fig)} from the admin's 201 to the last worker's 200 "
                   f"({fig['keys']} keys, {fig['workers']} workers); bound p99 "
                   f"<= {BOUND_MS:.0f} ms", fig)


async def check_exact_limit(run: Run) -> Verdict:
    """All the requests at once, each on a connection of its own, alternating hosts."""
    sizes = run.sizes
    key = await run.key(usage_limit=sizes.usage_limit)
    statuses = await _burst(run, key["key"], sizes.burst)
    received = (await upstream_counts(run.top))[key["id"]]

    async def flushed() -> bool:
        return (await usage_counts(run.top, [key["id"]])).get(key["id"]) == sizes.usage_limit
    with contextlib.suppress(CheckFailed):
        await until("usage written behind", flushed)
    usage = (await usage_counts(run.top, [key["id"]])).get(key["id"])
    ok = (received == usage == sizes.usage_limit
          and statuses == Counter({200: sizes.usage_limit, 429: sizes.burst - sizes.usage_limit}))
    fig = {"requests": sizes.burst, "usage_limit": sizes.usage_limit,
           "statuses": dict(statuses), "upstream_received": received, "pg_usage_count": usage}
    return Verdict(f"{sizes.burst} concurrent requests over both hosts, usage_limit "
                   f"{sizes.usage_limit}", ok,
                   f"{received} reached the upstream, usage_count {usage} in PostgreSQL, "
                   f"answers {dict(sorted(statuses.items()))}", fig)


async def check_revocation(run: Run) -> Verdict:
    delays = []
    for _ in range(run.sizes.keys):
        key = await run.key()
        await run.probes.until_all(key["key"], {200}, time.perf_counter())  # cached everywhere
        await run.admin.ok("POST", f"/v1/keys/{key['id']}/revoke", {})
        revoked = time.perf_counter()
        delays.append(await run.probes.until_all(key["key"], {401, 403}, revoked))
    fig = {"revocations": len(delays), "workers": len(run.probes.all), **percentiles(delays)}
    return Verdict("revocation refused on every worker of both hosts",
                   fig["p99_ms"] <= BOUND_MS,
                   f"{_pct(fig)} from the admin's answer to the last worker's 401 "
                   f"({fig['revocations']} revocations, {fig['workers']} workers, idle "
                   f"gateways); bound p99 <= {BOUND_MS:.0f} ms", fig)


async def check_redis_failover(run: Run) -> Verdict:
    """Load on a key with a lifetime limit (every request spends in Redis, on the master of
    its organisation's slot) while that master is killed. Afterwards the promoted replica's
    live count of the key (the admin API's usage, read from Redis) must match what the
    upstream received to within the requests in flight when the master died (Redis
    replicates asynchronously: a spend it acknowledged in its last instant can be lost, and a
    request caught in the switch can be refused after its spend ran), and a fresh key's limit
    is exact again on the new master."""
    top, sizes = run.top, run.sizes
    redis = top.redis
    key = await run.key(usage_limit=1_000_000_000)
    master = redis.master_of(f"ks:{{{run.org_id}}}:")
    hosts = [g.host for g in top.layout.gateways]
    # Every worker under load through the switch (one that sat idle through it meets the
    # dead master on its first requests afterwards: see the report).
    async with Load(top, key["key"], sizes.load, new_connections=True) as load:
        await until("load served on both hosts",
                    _async(lambda: all(load.served(h) >= 100 for h in hosts)))
        await asyncio.to_thread(redis.kill, master)
        killed = time.perf_counter()
        await asyncio.to_thread(redis.wait_ok, FAILOVER_DEADLINE_S)
        promoted = time.perf_counter()
        await until("both hosts serving after the failover",
                    _async(lambda: all(load.served(h, promoted) >= SERVED_AFTER
                                       for h in hosts)), FAILOVER_DEADLINE_S)
        ended = time.perf_counter()
    outcomes = Counter((o.status, o.code) for o in load.outcomes)
    gaps = {h: round(longest_gap(load.outcomes, h, killed, ended), 2) for h in hosts}
    refused = [o for o in load.outcomes if o.ended >= killed and o.status != 200]
    new_master = redis.master_of(f"ks:{{{run.org_id}}}:")
    received = (await upstream_counts(top))[key["id"]]
    live = (await run.admin.ok("GET", f"/v1/keys/{key['id']}/usage"))["usage_count"]
    # The limits on the new master: exact again.
    limited = await run.key(usage_limit=sizes.usage_limit)
    burst = await _burst(run, limited["key"], sizes.burst)
    limited_received = (await upstream_counts(top))[limited["id"]]
    # The killed node comes back as a replica of the promoted one: 3 + 3 again.
    await asyncio.to_thread(redis.restart, master)
    fig = {"load_concurrency": sizes.load, "killed_master": redis.address(master),
           "promoted": redis.address(new_master), "failover_s": round(promoted - killed, 2),
           "longest_gap_s": gaps, "refused_after_kill": len(refused),
           "outcomes": {f"{s} {c}".strip(): n for (s, c), n in outcomes.items()},
           "upstream_received": received, "redis_live_count": live,
           "after": {"usage_limit": sizes.usage_limit, "requests": sizes.burst,
                     "statuses": dict(burst), "upstream_received": limited_received}}
    allowed = {(200, ""), (503, "store_unavailable")}
    ok = (new_master != master and set(outcomes) <= allowed
          and abs(live - received) <= sizes.load
          and limited_received == sizes.usage_limit
          and burst == Counter({200: sizes.usage_limit, 429: sizes.burst - sizes.usage_limit}))
    gap_text = ", ".join(f"{h} {g} s" for h, g in gaps.items())
    other = sum(n for (s, c), n in outcomes.items() if (s, c) not in allowed)
    return Verdict(
        "Redis master killed under load: replica takes over, both hosts keep serving", ok,
        f"replica promoted {fig['failover_s']} s after the kill; longest time without a "
        f"success: {gap_text}; {len(refused)} requests refused 503 store_unavailable meanwhile "
        f"(quotas_without_redis = closed), {other} other failures; the new master counts "
        f"{live} spent, the upstream got {received} (bound: they differ by at most the "
        f"{sizes.load} in flight); then {limited_received} of "
        f"{sizes.burst} concurrent requests through against usage_limit {sizes.usage_limit}",
        fig)


def _async(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()
    return check


async def _burst(run: Run, raw_key: str, n: int) -> Counter[int]:
    """``n`` concurrent requests, alternately on each gateway host; their statuses."""
    hosts = [g.http for g in run.top.layout.gateways]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one(i: int) -> int:
            async with session.get(f"{hosts[i % len(hosts)]}{ROUTE}/burst",
                                   headers={"X-API-Key": raw_key}) as resp:
                await resp.read()
                return resp.status
        return Counter(await asyncio.gather(*(one(i) for i in range(n))))


async def check_gateway_host_killed(run: Run) -> Verdict:
    """Load over both hosts; one host is SIGKILLed (its supervisor and workers at once).
    The other must answer every request meanwhile. What the killed host had not written
    behind is the one usage allowed to be lost: its requests of the last flush interval."""
    top, sizes = run.top, run.sizes
    victim, survivor = (g.host for g in top.layout.gateways)
    key = await run.key()
    async with Load(top, key["key"], sizes.load) as load:
        await until("load served on both hosts",
                    _async(lambda: all(load.served(h) >= 100
                                       for h in (victim, survivor))))
        # Past a flush or two, so the killed host has written some usage behind.
        await asyncio.sleep(1.5 * USAGE_FLUSH_INTERVAL_S)
        await asyncio.to_thread(top.kill_gateway, victim)
        killed = time.perf_counter()
        await until("the surviving host serving on",
                    _async(lambda: load.served(survivor, killed) >= 4 * SERVED_AFTER))
        ended = time.perf_counter()
    survivor_after = [o for o in load.outcomes if o.host == survivor and o.ended >= killed]
    survivor_failed = [o for o in survivor_after if o.status != 200]
    gap = longest_gap(load.outcomes, survivor, killed, ended)
    # Requests the victim may have served without writing their usage: those it got in
    # its last flush interval, whatever the client saw (it may have died mid-answer).
    run.victim_starts = sorted(o.started for o in load.outcomes
                               if o.host == victim and o.started <= killed)
    run.killed_at = killed
    bound = lost_bound(run)
    victim_after = Counter(o.code or str(o.status) for o in load.outcomes
                           if o.host == victim and o.ended >= killed)
    await asyncio.to_thread(top.start_gateway, victim)
    await run.probes.connect(victim)
    back = await run.probes.statuses(key["key"])
    fig = {"load_concurrency": sizes.load, "killed": victim,
           "survivor_served_after_kill": len(survivor_after) - len(survivor_failed),
           "survivor_failed_after_kill": len(survivor_failed),
           "survivor_longest_gap_s": round(gap, 3),
           "victim_requests_after_kill": dict(victim_after),
           "usage_loss_bound": bound, "restarted_answers": dict(back)}
    ok = not survivor_failed and back == Counter({200: len(run.probes.all)})
    return Verdict(
        "one gateway host killed: the other keeps serving", ok,
        f"{survivor} answered all {len(survivor_after)} requests after {victim} was killed "
        f"(longest time without a success {gap * 1000:.0f} ms); {victim}'s clients got "
        f"{dict(victim_after)}; restarted, it serves again", fig)


async def check_postgres_primary_stopped(run: Run) -> Verdict:
    """The primary stopped (fast shutdown) for a few seconds: known keys keep working on
    every worker and their usage waits; the admin API answers 503; when the primary is back
    the admin API answers again, a new key works everywhere, and the usage is written."""
    admin_load = AdminLoad(run)
    try:
        return await _primary_stopped(run, admin_load)
    finally:
        await admin_load.stop()


async def _primary_stopped(run: Run, admin_load: AdminLoad) -> Verdict:
    top, sizes = run.top, run.sizes
    known = await run.key()
    await run.probes.until_all(known["key"], {200}, time.perf_counter())
    unused = await run.key()  # in both databases, never asked for: not in any cache
    # Admin requests keep coming through the stop and the restart: some are in flight as
    # the primary goes, some meet pooled connections it has just closed.
    await admin_load.start()
    await until("admin requests under way", _async(lambda: admin_load.succeeded() >= 10))
    await asyncio.to_thread(top.stop_primary)
    stopped = time.perf_counter()
    admin_answers: list[tuple[int, str, float]] = []
    try:
        for method, path, body in (("GET", "/v1/keys", None),
                                   ("POST", "/v1/keys", {"org_id": run.org_id}),
                                   ("GET", f"/v1/keys/{known['id']}", None)):
            started = time.perf_counter()
            status, answer = await run.admin.call(method, path, body)
            code = (answer or {}).get("error", {}).get("code", "") if status >= 400 else ""
            admin_answers.append((status, code, round(time.perf_counter() - started, 3)))
        async with Load(top, known["key"], sizes.load) as load:
            # Long enough for flushes to fail: the usage has to wait in memory.
            await until("known key served on both hosts while the primary is down",
                        _async(lambda: all(load.served(g.host) >= 2 * SERVED_AFTER
                                           for g in top.layout.gateways)
                               and time.perf_counter() - stopped
                               > 2 * USAGE_FLUSH_INTERVAL_S))
        during = Counter(o.status for o in load.outcomes)
        every_worker = await run.probes.statuses(known["key"])
        unused_answers = await run.probes.statuses(unused["key"])
        outage_s = time.perf_counter() - stopped
    finally:
        restarting = time.perf_counter()
        await asyncio.to_thread(top.start_primary)
    restart_s = time.perf_counter() - restarting

    async def admin_back() -> bool:
        status, _ = await run.admin.call("GET", "/v1/keys?limit=1")
        return status == 200
    admin_s = await until("the admin API answering again", admin_back)
    back = time.perf_counter()
    await until("admin requests served again",
                _async(lambda: admin_load.succeeded(back) >= 10))
    await admin_load.stop()
    around = Counter(f"{s} {c}".strip() for s, c, _ in admin_load.answers)
    slowest = max((t for _, _, t in admin_load.answers), default=0.0)
    fresh = await run.key()
    created = time.perf_counter()
    fresh_s = await run.probes.until_all(fresh["key"], {200}, created)
    received = (await upstream_counts(top))[known["id"]]

    async def flushed() -> bool:
        return (await usage_counts(top, [known["id"]])).get(known["id"]) == received
    try:
        flush_s: float | None = await until("usage of the outage written to PostgreSQL",
                                            flushed)
    except CheckFailed:
        flush_s = None
    usage = (await usage_counts(top, [known["id"]])).get(known["id"])
    admin_503 = all(s == 503 and c == "store_unavailable" for s, c, _ in admin_answers)
    fig = {"outage_s": round(outage_s, 2), "served_during_outage": dict(during),
           "every_worker_during_outage": dict(every_worker),
           "unused_key_during_outage": dict(unused_answers),
           "admin_answers": [{"status": s, "code": c, "seconds": t}
                             for s, c, t in admin_answers],
           "primary_restart_s": round(restart_s, 2),
           "admin_back_after_s": round(admin_s, 2),
           "admin_load_answers": dict(around), "admin_load_slowest_s": round(slowest, 3),
           "new_key_everywhere_ms": round(fresh_s * 1000, 1),
           "usage_flushed_after_s": None if flush_s is None else round(flush_s, 2),
           "upstream_received": received, "pg_usage_count": usage}
    ok = (set(during) == {200} and every_worker == Counter({200: len(run.probes.all)})
          and admin_503 and usage == received
          and set(around) <= {"200", "201", "503 store_unavailable"})
    answers = ", ".join(f"{s} {c} in {t * 1000:.0f} ms" for s, c, t in admin_answers)
    return Verdict(
        "PostgreSQL primary stopped: known keys served, admin 503, all recovers", ok,
        f"{during[200]} requests of a known key served, {sum(during.values()) - during[200]} "
        f"not, over {outage_s:.1f} s; a key never used before got {dict(unused_answers)} "
        f"from the workers; admin API: {answers}; {sum(around.values())} admin requests "
        f"through the stop and restart: {dict(around)}, the slowest {slowest * 1000:.0f} ms; "
        f"after the restart: admin 200 within "
        f"{admin_s:.2f} s, a new key on every worker in {fresh_s * 1000:.0f} ms, the outage's "
        f"usage in PostgreSQL ({usage} of {received}) "
        + ("within " + f"{flush_s:.2f} s" if flush_s is not None else "NOT written"), fig)


class AdminLoad:
    """Two admin clients (one listing keys, one creating them), paced, until stopped; every
    answer recorded: (status, error code, seconds)."""

    PACE_S = 0.02  # each client's pause between requests: a steady trickle, not a flood

    def __init__(self, run: Run) -> None:
        self.run = run
        self.answers: list[tuple[int, str, float]] = []
        self.ended: list[float] = []  # when each answer came
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        calls = [("GET", "/v1/keys?limit=1", None),
                 ("POST", "/v1/keys", {"org_id": self.run.org_id, "name": "admin load"})]
        self._tasks = [asyncio.create_task(self._client(*call)) for call in calls]

    async def _client(self, method: str, path: str, body: Any) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status, answer = await self.run.admin.call(method, path, body)
                code = ((answer or {}).get("error", {}).get("code", "")
                        if status >= 400 else "")
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, code = 0, type(exc).__name__
            self.answers.append((status, code, time.perf_counter() - started))
            self.ended.append(time.perf_counter())
            await asyncio.sleep(self.PACE_S)

    def succeeded(self, after: float = 0.0) -> int:
        return sum(1 for (status, _, _), ended in zip(self.answers, self.ended, strict=True)
                   if status in (200, 201) and ended > after)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# A flush takes its snapshot as it starts, so what a killed process had not written is the
# interval plus the flush's own duration (plus the event loop's lag under load): the
# verdict allows that much beyond the documented interval, and the report says how long a
# span of the killed host's requests was actually lost.
FLUSH_SLACK_S = 0.25


def lost_bound(run: Run) -> int:
    """Requests whose usage the killed host may have lost: those it got in its last
    ``usage_flush_interval_s`` (+ the slack above) before the kill."""
    since = run.killed_at - USAGE_FLUSH_INTERVAL_S - FLUSH_SLACK_S
    return sum(1 for t in run.victim_starts if t >= since)


def lost_span(run: Run, lost: int) -> float:
    """How long a span of the killed host's last requests ``lost`` requests are."""
    if lost <= 0 or not run.victim_starts:
        return 0.0
    return run.killed_at - run.victim_starts[-min(lost, len(run.victim_starts))]


async def check_accounting(run: Run) -> Verdict:
    """Every key the checks used: the upstream's count against PostgreSQL's, once the
    usage written behind has settled; and no limited key past its limit."""
    top = run.top
    previous: dict[str, int] | None = None
    stable_since = time.perf_counter()
    deadline = stable_since + WAIT_S
    while True:  # settled: unchanged for two flush intervals
        usage = await usage_counts(top, run.keys)
        now = time.perf_counter()
        if usage != previous:
            previous, stable_since = usage, now
        elif now - stable_since >= 2 * USAGE_FLUSH_INTERVAL_S or now > deadline:
            break
        await asyncio.sleep(0.1)  # polling PostgreSQL
    received = await upstream_counts(top)
    lost = sum(max(received[k] - usage.get(k, 0), 0) for k in run.keys)
    extra = sum(max(usage.get(k, 0) - received[k], 0) for k in run.keys)
    over = {k: received[k] - limit for k, limit in run.limits.items() if received[k] > limit}
    bound, span = lost_bound(run), lost_span(run, lost)
    total = sum(received[k] for k in run.keys)
    fig = {"keys": len(run.keys), "upstream_received": total,
           "pg_usage_count": sum(usage.values()), "lost": lost, "lost_bound": bound,
           "lost_span_s": round(span, 3),
           "counted_but_not_received": extra, "over_spent_keys": over}
    ok = not over and extra == 0 and lost <= bound
    return Verdict(
        "nothing over-spent, no usage lost beyond the write-behind bound", ok,
        f"{total} requests reached the upstream over {len(run.keys)} keys, PostgreSQL counts "
        f"{sum(usage.values())}: {lost} lost, the killed host's last {span:.2f} s of requests "
        f"(bound: {bound}, its last {USAGE_FLUSH_INTERVAL_S:.0f} s + {FLUSH_SLACK_S} s), "
        f"{extra} counted but never received; "
        f"{len(over)} limited key(s) over their limit", fig)


async def check_no_server_errors(run: Run) -> Verdict:
    """Through all of the above, no host answered 500, logged an error (an unhandled one is
    logged at ERROR with its traceback) or lost a worker: every failure was a declared
    refusal (401, 429, 503)."""
    top = run.top
    bad: dict[str, dict[str, int]] = {}
    warned: dict[str, int] = {}
    for process in (top.admin, *top.gateways.values()):
        lines = process.log.read_text(errors="replace").splitlines()
        counts = Counter({"500 answers": sum('"status":500' in line for line in lines),
                          "errors logged": sum(" ERROR " in line or " CRITICAL " in line
                                               for line in lines),
                          "workers died": sum("gateway worker" in line and "exited" in line
                                              for line in lines)})
        if +counts:
            bad[process.name] = dict(+counts)
        # asyncpg's pool logs a WARNING with a traceback each time it cannot reconnect
        # while PostgreSQL is down: expected, counted for the report.
        warned[process.name] = sum("Traceback (most recent call last)" in line
                                   for line in lines)
    return Verdict("no 500, no error logged, no worker lost on any host", not bad,
                   f"admin API and both gateway hosts: {bad or 'none'} (tracebacks in "
                   f"warnings, asyncpg reconnecting while the primary was down: {warned})",
                   {"found": bad, "warning_tracebacks": warned})


CHECKS: tuple[Callable[[Run], Awaitable[Verdict]], ...] = (
    check_new_key, check_exact_limit, check_revocation, check_redis_failover,
    check_gateway_host_killed, check_postgres_primary_stopped, check_accounting,
    check_no_server_errors)


async def run_checks(top: Topology, sizes: Sizes,
                     report: Callable[[Verdict], None] = lambda v: None) -> list[Verdict]:
    """Every check in order on a running topology; a check that raises is a failed verdict
    and the next one still runs."""
    admin = Admin(top)
    probes = Probes(top)
    verdicts: list[Verdict] = []
    try:
        org = await admin.ok("POST", "/v1/orgs", {"name": "cluster check",
                                                   "provider_id": "clustercheck"})
        await probes.connect()
        run = Run(top, sizes, admin, probes, org["id"])
        for check in CHECKS:
            try:
                verdict = await check(run)
            except Exception as exc:  # a check that raises is a failed verdict, not the end
                verdict = Verdict(check.__name__.removeprefix("check_").replace("_", " "),
                                  False, f"{type(exc).__name__}: {exc}")
            verdicts.append(verdict)
            report(verdict)
    finally:
        await probes.close()
        await admin.close()
    return verdicts


def format_verdict(verdict: Verdict) -> str:
    return f"[{'PASS' if verdict.ok else 'FAIL'}] {verdict.name}\n       {verdict.summary}"


def to_json(layout: Layout, verdicts: list[Verdict]) -> bytes:
    return orjson.dumps({"layout": dataclasses.asdict(layout),
                         "checks": [dataclasses.asdict(v) for v in verdicts]},
                        option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
                        | orjson.OPT_NON_STR_KEYS)


def run(sizes: Sizes, data_dir: Path, layout: Layout, *, durable: bool = False,
        out: Callable[[str], None] = print) -> list[Verdict]:
    """``keystile cluster-check``: a topology of its own (``layout``: free ports) under
    ``data_dir``, every check, the report; the topology is stopped whatever happens."""
    # 1,000 requests at once are 1,000 sockets here (and a share of them in each gateway
    # worker, which inherits the limit): lift the soft descriptor limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    out(f"starting a cluster under {data_dir} (gateway hosts "
        f"{', '.join(str(g) for g in layout.gateways)}) …")
    started = time.perf_counter()
    top = Topology(layout, data_dir, durable=durable)
    try:
        top.start()
        out(f"up in {time.perf_counter() - started:.1f} s; checking (logs: {top.logs}/)")
        verdicts = asyncio.run(run_checks(top, sizes, lambda v: out(format_verdict(v))))
    finally:
        top.stop()
    passed = sum(v.ok for v in verdicts)
    out(f"{passed} of {len(verdicts)} checks passed in {time.perf_counter() - started:.0f} s")
    return verdicts
