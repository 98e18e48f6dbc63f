"""The load benchmark: Keystile against nginx and a bare aiohttp proxy, in one run on loopback.

    B0  nginx answering 200 itself (the upstream of every other setup)
    B1  nginx as a plain keep-alive reverse proxy to B0
    B2  nginx with a static ``map`` of the same keys (401 for any other), proxying to B0
    B3  a bare aiohttp pass-through proxy to B0, no checks (bench/bareproxy.py)
    B4  Keystile itself (K1's gateway and workers) on a route with auth = "none" and no
        limits, called without keys: its own forwarding, every check skipped
    K1  Keystile, limits_mode = "exact": key, scope, 3 rate-limit windows of the key, an
        owner window, an organisation window, a daily quota and a lifetime usage limit
    K2  Keystile, limits_mode = "fast": the same checks, limits spent in batches
    KC  K1's checks on a Redis Cluster (3 masters, 3 replicas) for ONE organisation with
        10,000 keys (1,000 with --quick): the figures per master, and a check that a few of
        its keys with a small lifetime limit admit exactly that limit (bench/cluster.py)
    B1@1, B3@1, K1@1  B1's, B3's and K1's processes again at 1 connection (closed loop): the
        service time of one request, where at 16 connections latency is mostly queueing

Every proxy runs 2 processes; wrk runs one thread pinned to one core and rotates the valid
keys, 1% invalid ones and a few keys whose quota runs out. Each setup gets the same warm-up
and the same measured duration. Then two cases: the key-table scale case (cache-miss lookups
with 1,000 vs 1,000,000 keys in PostgreSQL), the soak (RSS of the workers before and after
a million requests) and the limit-state memory of one key after a million spends
(bench/limitmemory.py).

KC's wrk rotates only that organisation's keys; its Redis figures are summed over the cluster's
masters, and given per master (``redis_masters``).

Results: printed, and written to bench/results/last-run/ (git-ignored): latest.json,
latest.md (the machine, issue 14's goals, the ratios, then the figures) and latest.png;
--save (a full run only) also copies them to the committed bench/results/latest.*.

    .venv/bin/python bench/load.py            # the full run (15 to 25 minutes)
    .venv/bin/python bench/load.py --quick    # a few minutes
    .venv/bin/python bench/load.py --save     # the full run, kept for the README
    .venv/bin/python bench/load.py --profile K1   # also py-spy the K1 workers and break
                                                  # their CPU down by stage (bench/breakdown.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import breakdown, cluster, limitmemory, report, scale, tools
from bench.seed import seed_keys
from keystile.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedRedisCluster, free_port

RESULTS = Path(__file__).parent / "results"  # latest.*: the full run the README quotes
LAST_RUN = RESULTS / "last-run"  # every run's results (git-ignored)
SAVED = ("latest.json", "latest.md", "latest.png")
SETUPS = ("B0", "B1", "B2", "B3", "B4", "K1", "K2", "KC", "B1@1", "B3@1", "K1@1")
LOAD_CORE = 0  # wrk runs here; the servers may use any core

WRK_SCRIPT = """
local keys = {}
for line in io.lines("%(keys)s") do keys[#keys + 1] = line end
local i = 0
init = function(args) i = tonumber(args[1]) end  -- each run starts somewhere else
statuses = {}
request = function()
  i = i + 1
  if #keys == 0 then return wrk.format("GET", "%(path)s") end  -- B4: a route without keys
  return wrk.format("GET", "%(path)s", {["X-API-Key"] = keys[(i %% #keys) + 1]})
end
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
local threads = {}
setup = function(thread) threads[#threads + 1] = thread end
done = function(summary, latency, requests)
  local merged = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do merged[code] = (merged[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(merged) do parts[#parts + 1] = string.format('"%%d": %%d', code, n) end
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, '
    .. '"p99_us": %%d, "max_us": %%d, "socket_errors": %%d, "statuses": {%%s}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect + e.read + e.write + e.timeout, table.concat(parts, ", ")))
end
"""


@dataclass
class Setup:
    name: str
    title: str
    port: int
    root: subprocess.Popen[bytes]
    metrics_url: str | None = None  # Keystile's /metrics, for its Redis round trips
    script: Path | None = None  # its own wrk script (rotation), if not the stack's
    redis_urls: dict[int, str] = field(default_factory=dict)  # its Redis nodes (KC: masters)

    def processes(self) -> list[psutil.Process]:
        parent = psutil.Process(self.root.pid)
        return [parent, *parent.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        """The processes that serve requests: not the supervising parent, if any, nor
        multiprocessing's resource tracker."""
        procs = [p for p in self.processes()[1:]
                 if "resource_tracker" not in " ".join(p.cmdline())]
        return procs or self.processes()


@dataclass
class Stack:
    work: Path
    pg: EmbeddedPostgres
    redis_url: str
    script: Path
    setups: dict[str, Setup] = field(default_factory=dict)


def _script(stack: Stack, setup: Setup) -> Path:
    return setup.script or stack.script


def _write_script(work: Path, name: str, keys: list[str], path: str = "/svc/item") -> Path:
    """A wrk script requesting ``path`` with ``keys`` in rotation (in a file next to it; none:
    no key sent)."""
    keys_file = work / f"{name}.txt"
    keys_file.write_text("".join(f"{key}\n" for key in keys))
    script = work / f"{name}.lua"
    script.write_text(WRK_SCRIPT % {"keys": keys_file, "path": path})
    return script


def _started(proc: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    """``proc`` once it listens on ``port``; killed if it never does."""
    try:
        _wait_port(port)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _nginx(work: Path, name: str, port: int, upstream: int | None, server: str,
           http: str = "") -> subprocess.Popen[bytes]:
    conf = work / f"nginx-{name}.conf"
    origin = (f"upstream origin {{ server 127.0.0.1:{upstream}; keepalive 64; }}"
              if upstream else "")
    conf.write_text(f"""
worker_processes 2;
pid {work}/nginx-{name}.pid;
error_log {work}/nginx-{name}.err warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  {origin}
  {http}
  server {{ listen 127.0.0.1:{port}; {server} }}
}}""")
    return _started(subprocess.Popen([tools.nginx(), "-c", str(conf), "-p", str(work)],
                                     stderr=subprocess.DEVNULL), port)


PROXY = ("location / { proxy_pass http://origin; proxy_http_version 1.1; "
         "proxy_set_header Connection ''; }")


def _key_map(keys: list[str]) -> str:
    entries = "\n".join(f'    "{key}" 1;' for key in keys)
    return ("map_hash_max_size 65536; map_hash_bucket_size 128;\n"
            f"  map $http_x_api_key $known_key {{\n    default 0;\n{entries}\n  }}")


OPEN_PATH = "/open/item"  # B4's route on K1's gateway: no credential, so no checks at all


def _gateway(work: Path, name: str, upstream: int, pg_url: str, redis_url: str, mode: str
             ) -> tuple[subprocess.Popen[bytes], int]:
    """Keystile with 2 workers: ``/svc`` takes keys with the scope ``svc:read`` (and their
    limits); ``/open`` (B4) takes anyone, so every check is skipped and only Keystile's own
    forwarding is left."""
    port = free_port()
    config = work / f"gateway-{name}.toml"
    origin = f'upstream = "http://127.0.0.1:{upstream}"\n'
    config.write_text(f'[gateway]\nport = {port}\nworkers = 2\nlimits_mode = "{mode}"\n\n'
                      f'[[routes]]\nprefix = "/svc"\n{origin}'
                      'scopes = { GET = ["svc:read"] }\n\n'
                      f'[[routes]]\nprefix = "/open"\n{origin}auth = "none"\n')
    env = {**os.environ, "KEYSTILE_DATABASE_URL": pg_url, "KEYSTILE_REDIS_URL": redis_url}
    proc = subprocess.Popen([sys.executable, "-m", "keystile.cli", "gateway", "--config",
                             str(config)], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(work / f"gateway-{name}.log", "wb"))  # noqa: SIM115
    return _started(proc, port), port


def start(work: Path, key_count: int, pg: EmbeddedPostgres, redis_url: str,
          names: list[str]) -> Stack:
    """Starts B0 and every setup in ``names``."""
    valid, exhausting = asyncio.run(seed_keys(pg.url, key_count))
    invalid = [f"ks_{os.urandom(16).hex()}" for _ in range(max(key_count // 100, 1))]
    rotation = valid + exhausting + invalid
    random.shuffle(rotation)  # invalid and exhausting keys spread through the rotation
    stack = Stack(work, pg, redis_url, _write_script(work, "keys", rotation))
    try:
        _start_setups(stack, names, valid + exhausting, pg, redis_url)
    except BaseException:
        stop(stack)  # what did start must not outlive the run
        raise
    return stack


def _start_setups(stack: Stack, names: list[str], keys: list[str], pg: EmbeddedPostgres,
                  redis_url: str) -> None:
    work = stack.work
    upstream = free_port()
    add = stack.setups.__setitem__
    add("B0", Setup("B0", "nginx return 200 (the upstream)", upstream,
                    _nginx(work, "b0", upstream, None, "location / { return 200 'ok'; }")))
    if "B1" in names:
        port = free_port()
        add("B1", Setup("B1", "nginx keep-alive proxy", port,
                        _nginx(work, "b1", port, upstream, PROXY)))
    if "B2" in names:
        port = free_port()
        add("B2", Setup("B2", "nginx proxy + static key map", port, _nginx(
            work, "b2", port, upstream,
            "if ($known_key = 0) { return 401; }\n" + PROXY, _key_map(keys))))
    if "B3" in names:
        port = free_port()
        bare = subprocess.Popen([sys.executable, str(Path(__file__).parent / "bareproxy.py"),
                                 str(port), f"http://127.0.0.1:{upstream}", "2"],
                                stderr=subprocess.DEVNULL)  # clients cut off at the end
        _started(bare, port)
        add("B3", Setup("B3", "bare aiohttp proxy (no checks)", port, bare))
    for name, mode in (("K1", "exact"), ("K2", "fast")):
        if name not in names and not (name == "K1" and "B4" in names):
            continue
        proc, port = _gateway(work, name, upstream, pg.url, redis_url, mode)
        add(name, Setup(name, f"Keystile, limits_mode {mode}", port, proc,
                        f"http://127.0.0.1:{port}/metrics"))
    if "B4" in names:  # K1's processes, measured while K1's route rests
        k1 = stack.setups["K1"]
        add("B4", Setup("B4", "Keystile's own forwarding (auth none, no limits)", k1.port,
                        k1.root, k1.metrics_url, _write_script(work, "open", [], OPEN_PATH)))


def start_cluster_setup(stack: Stack, store: EmbeddedRedisCluster, key_count: int
                        ) -> tuple[cluster.ClusterOrg, Path]:
    """KC: one organisation of ``key_count`` keys, its own upstream (which logs what the
    limited keys got through) and Keystile in exact mode on ``store``. Returns the
    organisation and the upstream's log."""
    org = asyncio.run(cluster.seed(stack.pg.url, key_count))
    rotation = list(org.keys)
    random.shuffle(rotation)  # the limited keys somewhere in the rotation
    http, server, log = cluster.upstream_config(stack.work, org)
    upstream = free_port()
    stack.setups["KC-upstream"] = Setup("KC-upstream", "nginx return 200, logging limited keys",
                                        upstream, _nginx(stack.work, "kc-upstream", upstream,
                                                         None, server, http))
    proc, port = _gateway(stack.work, "KC", upstream, stack.pg.url, store.url, "exact")
    stack.setups["KC"] = Setup(
        "KC", f"Keystile exact, Redis Cluster, 1 org × {key_count:,} keys", port, proc,
        f"http://127.0.0.1:{port}/metrics", _write_script(stack.work, "kc-keys", rotation),
        cluster.master_urls(store))
    return org, log


def stop(stack: Stack) -> None:
    roots = list({id(s.root): s.root for s in stack.setups.values()}.values())  # B4 is K1's
    for root in roots:
        with contextlib.suppress(ProcessLookupError):
            root.send_signal(signal.SIGTERM)
    for root in roots:
        try:
            root.wait(15)
        except subprocess.TimeoutExpired:
            root.kill()
            root.wait()


@dataclass
class Run:
    """What one wrk run reports (through the Lua script's done())."""

    requests: int
    duration_us: int
    p50_us: int
    p99_us: int
    max_us: int
    socket_errors: int
    statuses: dict[str, int]


def wrk(port: int, script: Path, seconds: float, connections: int) -> Run:
    command = ["taskset", "-c", str(LOAD_CORE), *tools.wrk(), "-t1", f"-c{connections}",
               f"-d{max(seconds, 1):g}s", "--timeout", "5s", "-s", str(script),
               f"http://127.0.0.1:{port}/svc/item", "--",
               str(random.randrange(1 << 30))]  # noqa: S311 - where in the rotation to start
    out = subprocess.run(command, capture_output=True, text=True, env=tools.wrk_env(),
                         check=True, timeout=seconds + 60).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    return Run(**json.loads(line.removeprefix("WRKJSON ")))


def _redis_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def _redis_cpu(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (all its threads, user and system)."""
    stats = client.info("cpu")
    return float(stats["used_cpu_sys"]) + float(stats["used_cpu_user"])


def _limit_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match=limitmemory.LIMIT_KEYS, count=1000))


def limit_state(client: redis.Redis) -> tuple[int, int]:
    """Bytes (``MEMORY USAGE``, every element counted) and count of the limit-state keys."""
    keys = _limit_keys(client)
    total = 0
    for at in range(0, len(keys), 1000):
        with client.pipeline(transaction=False) as pipe:
            for key in keys[at:at + 1000]:
                pipe.memory_usage(key, samples=0)
            total += sum(int(n or 0) for n in pipe.execute())  # None: expired meanwhile
    return total, len(keys)


def forget_limits(client: redis.Redis) -> None:
    """Drops every limit counter, so each Keystile setup's limit state is its own. Lifetime
    usage and quotas come back from PostgreSQL (the gateway re-seeds what Redis lost)."""
    keys = _limit_keys(client)
    for at in range(0, len(keys), 1000):
        client.unlink(*keys[at:at + 1000])


def _metric(setup: Setup, sample: str) -> float:
    """One sample of Keystile's /metrics (summed over its workers), e.g.
    ``keystile_redis_round_trips_total`` or ``keystile_key_cache_total{result="worker"}``."""
    if setup.metrics_url is None:
        return 0.0
    with urllib.request.urlopen(setup.metrics_url, timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _round_trips(setup: Setup) -> float:
    return _metric(setup, "keystile_redis_round_trips_total")


def prewarm(stack: Stack, setup: Setup, connections: int, limit_s: float = 90) -> float:
    """Fills Keystile's caches the way production traffic would: load until nearly every key
    is answered from the worker's own cache (every key seen by every worker, its counters
    seeded). Cold lookups are measured apart, by the scale case. Returns the seconds taken."""
    started = time.monotonic()
    misses = ('keystile_key_cache_total{result="redis"}',
              'keystile_key_cache_total{result="postgres"}')
    while time.monotonic() - started < limit_s:
        before = sum(_metric(setup, m) for m in misses)
        # More connections than measured with: cold lookups wait on the stores, not the CPU.
        requests = wrk(setup.port, _script(stack, setup), 2, connections * 4).requests
        if sum(_metric(setup, m) for m in misses) - before < 0.01 * requests:
            break
    return round(time.monotonic() - started, 1)


@contextlib.contextmanager
def _peak_rss(procs: list[psutil.Process]) -> Iterator[dict[int, int]]:
    """Samples the RSS of ``procs`` every 100 ms while the block runs; yields pid -> peak."""
    peaks = {p.pid: 0 for p in procs}
    done = threading.Event()

    def sample() -> None:
        while True:
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    peaks[proc.pid] = max(peaks[proc.pid], proc.memory_info().rss)
            if done.wait(0.1):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def measure(stack: Stack, setup: Setup, warmup: float, seconds: float, connections: int,
            profile_to: Path | None = None) -> dict[str, Any]:
    """One setup's figures. Redis's are summed over the setup's Redis nodes (the one Redis,
    or a cluster's masters; then also given per master in ``redis_masters``)."""
    script = _script(stack, setup)
    wrk(setup.port, script, warmup, connections)
    clients = {port: redis.Redis.from_url(url)
               for port, url in (setup.redis_urls or {0: stack.redis_url}).items()}
    procs = setup.processes()
    trips, cpu = _round_trips(setup), _cpu_seconds(procs)
    calls = {port: _redis_calls(c) for port, c in clients.items()}
    redis_cpu = {port: _redis_cpu(c) for port, c in clients.items()}
    spies = _profile(setup, profile_to, seconds) if profile_to else []
    with _peak_rss(setup.workers()) as peaks:
        got = wrk(setup.port, script, seconds, connections)
    cpu = _cpu_seconds(procs) - cpu
    redis_cpu = {port: _redis_cpu(c) - redis_cpu[port] for port, c in clients.items()}
    calls = {port: _redis_calls(c) - calls[port] for port, c in clients.items()}
    trips = _round_trips(setup) - trips
    states = {port: limit_state(c) if setup.metrics_url else (None, None)
              for port, c in clients.items()}
    for client in clients.values():
        client.close()
    for spy in spies:
        spy.wait(seconds + 30)
    requests = got.requests
    per = max(requests, 1)
    state_bytes = (sum(b or 0 for b, _ in states.values()) if setup.metrics_url else None)
    state_keys = (sum(k or 0 for _, k in states.values()) if setup.metrics_url else None)
    statuses = dict(sorted(got.statuses.items()))
    if got.socket_errors:
        statuses["socket_errors"] = got.socket_errors
    return {
        "title": setup.title,
        "rps": round(requests / (got.duration_us / 1e6), 1),
        "p50_ms": got.p50_us / 1000,
        "p99_ms": got.p99_us / 1000,
        "max_ms": got.max_us / 1000,
        "cpu_us_per_req": round(cpu * 1e6 / per, 1),
        "redis_cpu_us_per_req": round(sum(redis_cpu.values()) * 1e6 / per, 1),
        "redis_cmds_per_req": round(sum(calls.values()) / per, 3),
        "redis_round_trips_per_req": round(trips / per, 4) if setup.metrics_url else 0.0,
        "rss_mb": round(max(peaks.values()) / 2**20, 1),
        "redis_limit_state_bytes": state_bytes,  # Keystile only: at the end of the setup
        "redis_limit_state_keys": state_keys,
        "requests": requests,
        "statuses": statuses,
    } | ({"redis_masters": {
        port: {"redis_cpu_us_per_req": round(redis_cpu[port] * 1e6 / per, 1),
               "redis_cmds_per_req": round(calls[port] / per, 3),
               "redis_limit_state_bytes": states[port][0],
               "redis_limit_state_keys": states[port][1]}
        for port in clients}} if setup.redis_urls else {})


def _profile(setup: Setup, folder: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy records each worker for the measured run (speedscope files in ``folder``,
    replacing the setup's files of an earlier run)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{setup.name}-*.json"):
        old.unlink()
    spy = Path(sys.executable).parent / "py-spy"
    return [subprocess.Popen([str(spy), "record", "--pid", str(proc.pid), "--duration",
                              str(int(seconds)), "--rate", "250", "--format", "speedscope",
                              "--output", str(folder / f"{setup.name}-{proc.pid}.json"),
                              "--gil"],  # samples holding the GIL: where the CPU goes
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for proc in setup.workers()]


def soak(stack: Stack, setup: Setup, total: int, connections: int, chunk_s: float,
         warmup_s: float) -> dict[str, object]:
    """``total`` requests in chunks of ``chunk_s``; worker RSS after the warm-up and at the
    end."""
    prewarm(stack, setup, connections)
    wrk(setup.port, _script(stack, setup), warmup_s, connections)
    workers = setup.workers()
    start_rss = {p.pid: p.memory_info().rss for p in workers}
    sent, started = 0, time.monotonic()
    while sent < total:
        sent += wrk(setup.port, _script(stack, setup), chunk_s, connections).requests
    end_rss = {p.pid: p.memory_info().rss for p in workers}
    growth = max(end_rss[pid] / start_rss[pid] - 1 for pid in start_rss)
    return {"setup": setup.name, "requests": sent,
            "seconds": round(time.monotonic() - started, 1),
            "rss_start_mb": [round(v / 2**20, 1) for v in start_rss.values()],
            "rss_end_mb": [round(v / 2**20, 1) for v in end_rss.values()],
            "max_growth_pct": round(growth * 100, 2)}


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """K/B1, K/B2, K/B3 requests/s; K/B3 CPU per request; the Redis server's CPU per request
    of K over B3's CPU per request, and K's gateway + Redis CPU over B3's; K1 over B4 (the
    checks against Keystile's own forwarding); K2's p99 over K1's; K's p99 over B0's; and
    the service-time overhead at one connection, K1@1's p50 and p99 less B3@1's."""
    out: dict[str, float] = {}

    def cpu(name: str) -> float:
        return float(results[name]["cpu_us_per_req"])

    for k in ("K1", "K2", "KC"):
        if k not in results:
            continue
        for b in ("B1", "B2", "B3"):
            if b in results:
                out[f"{k}/{b}_rps"] = round(results[k]["rps"] / results[b]["rps"], 3)
        if "B3" in results:
            out[f"{k}/B3_cpu"] = round(cpu(k) / cpu("B3"), 3)
            out[f"{k}/B3_redis_cpu"] = round(results[k]["redis_cpu_us_per_req"] / cpu("B3"), 3)
            out[f"{k}+redis/B3_cpu"] = round(
                (cpu(k) + results[k]["redis_cpu_us_per_req"]) / cpu("B3"), 3)
        if "B4" in results:
            out[f"{k}/B4_cpu"] = round(cpu(k) / cpu("B4"), 3)
        if "B0" in results:
            out[f"{k}-B0_p99_ms"] = round(results[k]["p99_ms"] - results["B0"]["p99_ms"], 3)
    if "B4" in results and "B3" in results:  # Keystile's forwarding against aiohttp's
        out["B4/B3_cpu"] = round(cpu("B4") / cpu("B3"), 3)
    if "K2" in results and "K1" in results:
        out["K2_p99/K1_p99"] = round(results["K2"]["p99_ms"] / results["K1"]["p99_ms"], 3)
    if "KC" in results and "K1" in results:  # the cluster against the one Redis, exact both
        out["KC/K1_rps"] = round(results["KC"]["rps"] / results["K1"]["rps"], 3)
    if "K1@1" in results and "B3@1" in results:
        for q in ("p50", "p99"):
            out[f"K1@1-B3@1_{q}_ms"] = round(results["K1@1"][f"{q}_ms"]
                                             - results["B3@1"][f"{q}_ms"], 3)
    return out


# Issue 14's goals: (what, the ratio judged, "<=" or ">=", target).
GOALS: tuple[tuple[str, str, str, float], ...] = (
    ("K1 gateway CPU per request ≤ 1.3 × B3", "K1/B3_cpu", "<=", 1.3),
    ("K1 gateway + Redis server CPU per request ≤ 1.5 × B3", "K1+redis/B3_cpu", "<=", 1.5),
    ("K2 (fast mode) gateway CPU per request ≤ 1.15 × B3", "K2/B3_cpu", "<=", 1.15),
    ("K1 CPU per request ≤ 1.6 × B4 (all checks ≤ 60% of Keystile's own forwarding)",
     "K1/B4_cpu", "<=", 1.6),
    ("K1 requests/s ≥ 0.8 × B3", "K1/B3_rps", ">=", 0.8),
    ("K2 p99 ≤ 1.2 × K1 p99", "K2_p99/K1_p99", "<=", 1.2),
    ("at 1 connection, K1's p50 at most 0.3 ms above B3's", "K1@1-B3@1_p50_ms", "<=", 0.3),
    ("at 1 connection, K1's p99 at most 1 ms above B3's", "K1@1-B3@1_p99_ms", "<=", 1.0),
)


def goals(measured: dict[str, float]) -> list[dict[str, Any]]:
    """Each goal with its target, the measured ratio and whether it was reached (None: the
    run lacked a setup the ratio needs)."""
    out = []
    for what, ratio, op, target in GOALS:
        value = measured.get(ratio)
        reached = (None if value is None
                   else value <= target if op == "<=" else value >= target)
        out.append({"goal": what, "ratio": ratio, "op": op, "target": target,
                    "value": value, "reached": reached})
    return out


def _cluster_figures(stack: Stack, store: EmbeddedRedisCluster, org: cluster.ClusterOrg,
                     upstream_log: Path, row: dict[str, Any], key_count: int
                     ) -> dict[str, Any]:
    """KC's extras: its figures per master, the organisation's one marked (one organisation,
    one slot, one master), and the check of its limited keys."""
    home = cluster.org_master(store)
    masters = cluster.spread(row["redis_masters"], cluster.slot_counts(store), home)
    checked = asyncio.run(cluster.check(stack.pg.url, stack.setups["KC"].port, org,
                                        upstream_log))
    return {"org_keys": key_count, "redis_masters": masters, **checked}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="keystile-load-"))
    pg = EmbeddedPostgres(work / "pg", durable=False).start()
    store = EmbeddedRedis(work / "redis", durable=False).start()
    stack: Stack | None = None
    redis_cluster: EmbeddedRedisCluster | None = None
    kc: tuple[cluster.ClusterOrg, Path] | None = None  # KC's organisation, upstream log
    results: dict[str, Any] = {}
    prewarmed: dict[str, float] = {}
    began = time.monotonic()
    try:
        soakable = ["K1", "K2"] if args.soak_setup == "auto" else [args.soak_setup]
        bases = [parse_setup(name, args.connections)[0] for name in args.setups]
        stack = start(work, args.keys, pg, store.url, [*bases, *soakable])
        if "KC" in args.setups:
            redis_cluster = EmbeddedRedisCluster(work / "cluster").start()
            kc = start_cluster_setup(stack, redis_cluster, args.cluster_keys)
        for name in args.setups:
            base, connections = parse_setup(name, args.connections)
            setup = stack.setups[base]
            if name != base:  # B1@1, B3@1, K1@1: the same processes, one connection
                setup = dataclasses.replace(setup, name=name,
                                            title=f"{setup.title}, {connections} connection"
                                            + ("s" if connections > 1 else ""))
            profile = args.out / "profiles" if name in args.profile else None
            # KC's cluster serves KC alone: it starts with none. The @1 runs keep what the
            # setups before left (their few requests would otherwise re-seed counters as they
            # go, and measure PostgreSQL).
            if name in ("B4", "K1", "K2"):
                with redis.Redis.from_url(store.url) as client:
                    forget_limits(client)
            if name.startswith("K"):
                prewarmed[name] = prewarm(stack, setup, args.connections)
            results[name] = measure(stack, setup, args.warmup, args.seconds, connections,
                                    profile)
            if profile is not None:
                results.setdefault("profile", {})[name] = breakdown.per_request(
                    breakdown.load(sorted(profile.glob(f"{name}-*.json"))),
                    results[name]["cpu_us_per_req"])
            if name == "KC" and redis_cluster is not None and kc is not None:
                results[name] |= _cluster_figures(stack, redis_cluster, *kc, results[name],
                                                  args.cluster_keys)
            print(report.line(name, results[name]), flush=True)
        results["ratios"] = ratios(results)
        results["goals"] = goals(results["ratios"])
        print("ratios:", results["ratios"], flush=True)
        if args.scale_keys:
            results["scale"] = asyncio.run(scale.run(pg, store.url, args.scale_keys,
                                                     args.scale_samples))
            print("scale:", results["scale"], flush=True)
        if args.soak_requests:
            soaked = args.soak_setup
            if soaked == "auto":  # a million requests take least on the faster one
                soaked = max((k for k in ("K1", "K2") if k in results),
                             key=lambda k: results[k]["rps"], default="K1")
            results["soak"] = soak(stack, stack.setups[soaked], args.soak_requests,
                                   args.connections, args.seconds, args.warmup)
            print("soak:", results["soak"], flush=True)
        if args.limit_spends:
            results.update(asyncio.run(limitmemory.run(
                pg.url, store.url, args.limit_spends, args.limit_minutes * 60)))
            print("limit memory:", results["limit_memory"], results["limit_memory_run"],
                  flush=True)
    finally:
        if stack is not None:
            stop(stack)
        if redis_cluster is not None:
            redis_cluster.stop()
        store.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["run"] = {"seconds": round(time.monotonic() - began, 1), "keys": args.keys,
                      "cluster_keys": args.cluster_keys if "KC" in args.setups else None,
                      "prewarm_s": prewarmed,
                      "connections": args.connections, "warmup_s": args.warmup,
                      "measured_s": args.seconds, "cpus": os.cpu_count(),
                      "machine": machine()}
    return results


def machine() -> dict[str, Any]:
    """Where the figures were taken: they only compare within one machine."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model,
            "kernel": f"{platform.system()} {platform.release()}"}


def parse_setup(name: str, connections: int) -> tuple[str, int]:
    """``"K1@1"`` → ("K1", 1): a setup's processes measured at another connection count;
    ``"K1"`` → ("K1", ``connections``)."""
    base, at, count = name.partition("@")
    if not at:
        return name, connections
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{name!r}: write a setup at N connections as SETUP@N, e.g. K1@1")
    return base, int(count)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the quick or full run's defaults filled in; refuses to save a
    run that is not the full one (``make bench SAVE=1``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 2-minute version")
    parser.add_argument("--seconds", type=float, help="measured seconds per setup")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per setup")
    parser.add_argument("--keys", type=int, help="valid keys in the rotation")
    parser.add_argument("--cluster-keys", type=int,
                        help="keys of KC's one organisation on the Redis Cluster")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--scale-keys", type=int, help="the large key table (0: skip)")
    parser.add_argument("--scale-samples", type=int, default=1000)
    parser.add_argument("--soak-requests", type=int, help="0: skip the soak")
    parser.add_argument("--soak-setup", default="auto",
                        help="K1, K2, or auto: the faster of the two in this run")
    parser.add_argument("--limit-spends", type=int,
                        help="spends on one key for the limit-memory check (0: skip)")
    parser.add_argument("--limit-minutes", type=float,
                        help="the limit-memory check stops after this long")
    parser.add_argument("--profile", default="", help="setups to py-spy, e.g. K1,K2")
    parser.add_argument("--out", type=Path, default=LAST_RUN,
                        help="where the results go (git-ignored by default)")
    parser.add_argument("--save", action="store_true",
                        help="also copy them to the committed bench/results/latest.* (a full "
                        "run only)")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.save and (quick or args.setups != ",".join(SETUPS)):
        parser.error("--save (make bench SAVE=1) keeps only a full run, every setup, for the "
                     "README to quote: run `make bench SAVE=1` without QUICK=1 or --setups")
    args.seconds = args.seconds if args.seconds is not None else (2 if quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    if args.scale_keys is None:
        args.scale_keys = 20_000 if quick else 1_000_000
    if args.soak_requests is None:
        args.soak_requests = 10_000 if quick else 1_000_000
    args.keys = args.keys if args.keys is not None else (1_000 if quick else 10_000)
    if args.cluster_keys is None:
        args.cluster_keys = 1_000 if quick else 10_000
    if args.limit_spends is None:
        args.limit_spends = limitmemory.QUICK_SPENDS if quick else limitmemory.SPENDS
    if args.limit_minutes is None:
        args.limit_minutes = limitmemory.QUICK_MINUTES if quick else limitmemory.MINUTES
    args.setups = [s for s in args.setups.split(",") if s]
    args.profile = [s for s in args.profile.split(",") if s]
    for name in args.setups:
        try:
            base, _ = parse_setup(name, args.connections)
        except ValueError as exc:
            parser.error(str(exc))
        if base not in SETUPS:
            parser.error(f"unknown setup {name!r} (use {', '.join(SETUPS)})")
    return args


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "latest.md").write_text(report.markdown(results))
    report.plot(results, out / "latest.png")


def main() -> None:
    args = arguments()
    results = run(args)
    write(results, args.out)
    if args.save:
        for name in SAVED:
            shutil.copyfile(args.out / name, RESULTS / name)
        print(f"saved to {RESULTS}/latest.{{json,md,png}}", flush=True)
    print(report.markdown(results))


if __name__ == "__main__":
    main()
