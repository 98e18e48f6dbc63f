"""The load benchmark (first cut): one run on loopback, wrk driving each setup in turn.

    B0  nginx answering 200 itself (the upstream of every other setup)
    B1  nginx as a plain keep-alive reverse proxy to B0
    B3  a bare aiohttp pass-through proxy to B0 (no checks), 2 processes
    K1  Keystile, exact mode, 2 workers: key, scope, 3 rate-limit windows and a quota

wrk rotates many valid keys (and ~1% invalid ones) through a Lua script. Prints requests/s,
p50 / p99 / max latency and the non-2xx count per setup, and writes
bench/results/latest.json and latest.md.

    .venv/bin/python bench/load.py [--seconds 10] [--keys 10000] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from admin_api.migrate import migrate
from bench import tools
from gateway import keyformat
from gateway.database import connect
from keystile.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

RESULTS = Path(__file__).parent / "results"
ORG = "org_benchAAAAAAAAAAAAAAAAA"

WRK_SCRIPT = """
local keys = {}
for line in io.lines("%(keys)s") do keys[#keys + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/svc/item", {["X-API-Key"] = keys[(i %% #keys) + 1]})
end
"""


def _nginx_conf(work: Path, port: int, body: str) -> Path:
    conf = work / f"nginx-{port}.conf"
    conf.write_text(f"""
worker_processes 2;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}.err warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  upstream origin {{ server 127.0.0.1:{port - 1}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port}; {body} }}
}}""")
    return conf


async def _seed(url: str, count: int) -> list[str]:
    conn = await connect(url)
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO orgs (id, name, provider_id, key_prefix) "
                           "VALUES ($1, 'bench', 'bench', 'ks') ON CONFLICT DO NOTHING", ORG)
        raws = [keyformat.generate("ks") for _ in range(count)]
        limits = [{"limit": 1_000_000, "window_s": 1}, {"limit": 10_000_000, "window_s": 60},
                  {"limit": 100_000_000, "window_s": 3600}]
        rows = [(keyformat.new_id("key"), raw) for raw in raws]
        await conn.executemany(
            "INSERT INTO keys (id, org_id, prefix, key_prefix, scopes, rate_limits, quota) "
            "VALUES ($1, $2, $3, 'ks', '{svc:read}', $4, $5)",
            [(key_id, ORG, raw[:12], limits, {"limit": 1_000_000_000, "period": "day"})
             for key_id, raw in rows])
        await conn.executemany("INSERT INTO key_secrets (hash, key_id) VALUES ($1, $2)",
                               [(keyformat.hash_key(raw), key_id) for key_id, raw in rows])
        return raws
    finally:
        await conn.close()


def _wrk(url: str, script: Path, seconds: int, connections: int) -> dict[str, object]:
    out = subprocess.run([*tools.wrk(), "-t2", f"-c{connections}", f"-d{seconds}s",
                          "--latency", "-s", str(script), url],
                         capture_output=True, text=True, env=tools.wrk_env(), check=True).stdout

    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.MULTILINE))
    max_ms = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": ms(latency["50"]), "p99_ms": ms(latency["99"]),
        "max_ms": ms(max_ms.group(1)) if max_ms else None,
        "requests": int(total.group(1)) if total else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def run(seconds: int, key_count: int, connections: int) -> dict[str, dict[str, object]]:
    work = Path(tempfile.mkdtemp(prefix="keystile-load-"))
    pg = EmbeddedPostgres(work / "pg", durable=False).start()
    redis = EmbeddedRedis(work / "redis", durable=False).start()
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, object]] = {}
    try:
        raws = asyncio.run(_seed(pg.url, key_count))
        invalid = [keyformat.generate("ks") for _ in range(max(key_count // 100, 1))]
        keys_file = work / "keys.txt"
        mixed = raws + invalid
        random.shuffle(mixed)  # invalid keys spread through the rotation
        keys_file.write_text("\n".join(mixed) + "\n")
        script = work / "keys.lua"
        script.write_text(WRK_SCRIPT % {"keys": keys_file})

        base = free_port()
        b0, b1 = base + 1, base + 2
        for port, body in ((b0, "location / { return 200 'ok'; }"),
                           (b1, "location / { proxy_pass http://origin; "
                                "proxy_http_version 1.1; proxy_set_header Connection ''; }")):
            procs.append(subprocess.Popen([tools.nginx(), "-c", str(_nginx_conf(work, port,
                                                                                 body)),
                                           "-p", str(work)], stderr=subprocess.DEVNULL))
            _wait_port(port)
        # nginx's upstream block points at port-1: make B1 reach B0.
        b3 = free_port()
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).parent /
                                                           "bareproxy.py"),
                                       str(b3), f"http://127.0.0.1:{b0}", "2"]))
        _wait_port(b3)
        k1 = free_port()
        config = work / "gateway.toml"
        config.write_text(f'[gateway]\nport = {k1}\nworkers = 2\n\n[[routes]]\n'
                          f'prefix = "/svc"\nupstream = "http://127.0.0.1:{b0}"\n'
                          f'scopes = {{ GET = ["svc:read"] }}\n')
        env = {**os.environ, "KEYSTILE_DATABASE_URL": pg.url, "KEYSTILE_REDIS_URL": redis.url}
        gateway = subprocess.Popen([sys.executable, "-m", "keystile.cli", "gateway",
                                    "--config", str(config)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gateway)
        _wait_port(k1)
        for name, port in (("B0", b0), ("B1", b1), ("B3", b3), ("K1", k1)):
            _wrk(f"http://127.0.0.1:{port}/svc/item", script, 2, connections)  # warm-up
            results[name] = _wrk(f"http://127.0.0.1:{port}/svc/item", script, seconds,
                                 connections)
            print(f"{name}: {results[name]}", flush=True)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.stop()
        pg.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    results = run(args.seconds, args.keys, args.connections)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| setup | req/s | p50 ms | p99 ms | max ms | non-2xx |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['max_ms']} | {r['non_2xx']} |" for n, r in results.items()]
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
