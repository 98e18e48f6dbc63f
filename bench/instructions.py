"""Instructions per request, counted by callgrind: what a proxy's own code costs, whatever
else the machine is doing.

`make bench`'s CPU µs per request move by ±30% between runs on a shared machine, and they
include what the kernel and the processor spend switching between the processes one request
wakes (the client, the proxy, Redis, the upstream). This counts the user-space instructions
ONE worker executes per request under ``valgrind --tool=callgrind``, for B3 (the bare aiohttp
proxy), B4 (Keystile's forwarding alone, an ``auth = "none"`` route) and K1 (exact mode, every
kind of limit): the same each run, so a change to the code shows in it. Under valgrind a
worker runs some 50 times slower, so wrk holds 4 connections on 200 keys; the requests counted
are those the upstream (nginx, logging each) received between two dumps of the counters.

    .venv/bin/python bench/instructions.py [--seconds 20] [--setups B3,B4,K1] [--out DIR]

Needs valgrind (Debian: ``apt-get install valgrind``); without it, it says so and stops.
Writes ``instructions.json`` to ``--out`` (``bench/results/last-run/``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import load
from bench.seed import seed_keys
from keystile.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

OUT = Path(__file__).parent / "results" / "last-run"
KEYS = 200
CONNECTIONS = 4
WARM_ROUNDS = 4  # of 5 s: every key cached by the worker, its counters seeded
START_S = 600  # a worker under valgrind takes a minute or more to import and start

# One worker in the process valgrind runs (the gateway's own supervisor would spawn it apart).
KEYSTILE_WORKER = """
import multiprocessing, os, sys, tempfile
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="keystile-metrics-")
from pathlib import Path
from gateway import server
from gateway.settings import load
server._worker(load(Path(sys.argv[1])), multiprocessing.Event())
"""
BARE_PROXY = """
import sys
sys.path.insert(0, sys.argv[3])
import bareproxy
bareproxy.serve(int(sys.argv[1]), sys.argv[2])
"""


def _config(work: Path, port: int, upstream: int) -> Path:
    config = work / f"gateway-{port}.toml"
    config.write_text(f'[gateway]\nport = {port}\nworkers = 1\nlimits_mode = "exact"\n\n'
                      f'[[routes]]\nprefix = "/svc"\nupstream = "http://127.0.0.1:{upstream}"\n'
                      'scopes = { GET = ["svc:read"] }\n\n'
                      f'[[routes]]\nprefix = "/open"\nupstream = "http://127.0.0.1:{upstream}"\n'
                      'auth = "none"\n')
    return config


def _totals(dump: Path) -> int:
    found = re.findall(r"^(?:summary|totals): (\d+)", dump.read_text(errors="replace"), re.M)
    if not found:
        raise RuntimeError(f"no instruction count in {dump}")
    return int(found[-1])


def _lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def measure(work: Path, name: str, command: list[str], env: dict[str, str], port: int,
            script: Path, access_log: Path, seconds: float) -> dict[str, float]:
    out = work / f"callgrind-{name}"
    out.mkdir()
    proc = subprocess.Popen(["valgrind", "--tool=callgrind",
                             f"--callgrind-out-file={out}/cg.%p", *command], env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=open(work / f"{name}.log", "wb"))  # noqa: SIM115
    try:
        load._wait_port(port, timeout=START_S)
        for _ in range(WARM_ROUNDS):
            load.wrk(port, script, 5, CONNECTIONS)
        loader = threading.Thread(target=load.wrk, args=(port, script, seconds + 30,
                                                          CONNECTIONS))
        loader.start()
        time.sleep(5)  # the load is on: the dump is taken at once
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True,
                       check=True, timeout=120)
        first = _lines(access_log)
        time.sleep(seconds)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True,
                       check=True, timeout=120)
        requests = _lines(access_log) - first
        loader.join()
        dumps = sorted(out.glob("cg.*.*"), key=lambda p: int(p.suffix[1:]))
        instructions = _totals(dumps[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"requests": requests, "instructions_per_req": round(instructions / requests)}


def run(seconds: float, setups: list[str]) -> dict[str, dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="keystile-instructions-"))
    pg = EmbeddedPostgres(work / "pg", durable=False).start()
    store = EmbeddedRedis(work / "redis", durable=False).start()
    upstream_proc = None
    results: dict[str, dict[str, float]] = {}
    try:
        valid, _ = asyncio.run(seed_keys(pg.url, KEYS))
        keyed = load._write_script(work, "keys", valid)
        open_script = load._write_script(work, "open", [], load.OPEN_PATH)
        upstream = free_port()
        access_log = work / "upstream-access.log"
        upstream_proc = load._nginx(work, "upstream", upstream, None,
                                    f"access_log {access_log} counted; "
                                    "location / { return 200 'ok'; }",
                                    "log_format counted '$status';")
        bench_dir = str(Path(__file__).parent)
        for name in setups:
            port = free_port()
            env = {**os.environ, "KEYSTILE_DATABASE_URL": pg.url,
                   "KEYSTILE_REDIS_URL": store.url}
            if name == "B3":
                command = [sys.executable, "-c", BARE_PROXY, str(port),
                           f"http://127.0.0.1:{upstream}", bench_dir]
            else:
                command = [sys.executable, "-c", KEYSTILE_WORKER,
                           str(_config(work, port, upstream))]
            script = open_script if name == "B4" else keyed
            results[name] = measure(work, name, command, env, port, script, access_log,
                                    seconds)
            print(f"{name}: {results[name]['instructions_per_req']:,} instructions per request "
                  f"({results[name]['requests']:,} requests counted)", flush=True)
    finally:
        if upstream_proc is not None:
            upstream_proc.terminate()
            upstream_proc.wait(15)
        store.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--setups", default="B3,B4,K1")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench/instructions.py needs valgrind (apt-get install valgrind)",
              file=sys.stderr)
        sys.exit(2)
    results = run(args.seconds, [s for s in args.setups.split(",") if s])
    ratios = {}
    if "B3" in results:
        for name in ("B4", "K1"):
            if name in results:
                ratios[f"{name}/B3_instructions"] = round(
                    results[name]["instructions_per_req"]
                    / results["B3"]["instructions_per_req"], 3)
    if "B4" in results and "K1" in results:
        ratios["K1/B4_instructions"] = round(results["K1"]["instructions_per_req"]
                                             / results["B4"]["instructions_per_req"], 3)
    print("ratios:", ratios)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "instructions.json").write_text(
        json.dumps({"setups": results, "ratios": ratios, "seconds": args.seconds,
                    "connections": CONNECTIONS, "keys": KEYS}, indent=2) + "\n")


if __name__ == "__main__":
    main()
