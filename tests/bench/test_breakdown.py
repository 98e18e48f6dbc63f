"""bench/breakdown.py: a py-spy speedscope file split into the stages of a request, by the
innermost frame a rule claims."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from bench import breakdown
from bench.breakdown import Frame

SITE = "/srv/.venv/lib/python3.12/site-packages"
FRAMES = [
    {"name": "run", "file": "/usr/lib/python3.12/asyncio/runners.py", "line": 1},        # 0
    {"name": "_handle_request", "file": f"{SITE}/aiohttp/web_protocol.py", "line": 1},   # 1
    {"name": "handle", "file": "/repo/gateway/app.py", "line": 1},                       # 2
    {"name": "spend", "file": "/repo/gateway/stages/limits.py", "line": 1},              # 3
    {"name": "spend", "file": "/repo/gateway/limits/exact.py", "line": 1},               # 4
    {"name": "execute", "file": f"{SITE}/redis/asyncio/client.py", "line": 1},           # 5
    {"name": "write", "file": "/usr/lib/python3.12/asyncio/streams.py", "line": 1},      # 6
    {"name": "forward", "file": "/repo/gateway/proxy.py", "line": 1},                    # 7
    {"name": "send", "file": f"{SITE}/aiohttp/client_reqrep.py", "line": 1},             # 8
    {"name": "write_headers", "file": f"{SITE}/aiohttp/http_writer.py", "line": 1},      # 9
    {"name": "prepare", "file": f"{SITE}/aiohttp/web_response.py", "line": 1},           # 10
    {"name": "log", "file": "/repo/gateway/accesslog.py", "line": 1},                    # 11
    {"name": "dumps", "file": "/usr/lib/python3.12/json/__init__.py", "line": 1},        # 12
    {"name": "inc", "file": f"{SITE}/prometheus_client/metrics.py", "line": 1},          # 13
    {"name": "find", "file": "aiohttp/web_urldispatcher.py", "line": 1},                 # 14 short
    {"name": "find", "file": "/repo/gateway/stages/lookup.py", "line": 1},               # 15
    {"name": "_worker", "file": "/repo/gateway/server.py", "line": 1},                   # 16
    {"name": "hash_key", "file": "/repo/gateway/keyformat.py", "line": 1},               # 17
    {"name": "check", "file": "/repo/gateway/stages/parse.py", "line": 1},               # 18
    {"name": "flush", "file": "/repo/gateway/usage.py", "line": 1},                      # 19
    {"name": "execute", "file": f"{SITE}/asyncpg/connection.py", "line": 1},             # 20
]


def _speedscope(samples: list[list[int]], weights: list[int]) -> dict[str, Any]:
    return {"$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": {"frames": FRAMES},
            "profiles": [{"type": "sampled", "name": "MainThread", "unit": "none",
                          "startValue": 0, "endValue": sum(weights),
                          "samples": samples, "weights": weights}]}


SAMPLES = [
    [0, 1, 2, 3, 4, 5, 6],  # redis-py under the limits engine under the stage: Redis client
    [0, 1, 2, 3, 4],        # the limits engine
    [0, 1, 2, 3],           # the limits stage itself
    [0, 1, 2, 15],          # the lookup stage
    [0, 1, 2, 7, 8, 9],     # aiohttp's writer under the upstream client: upstream client
    [0, 1, 2, 7, 10, 9],    # the same writer under our response: response
    [0, 1, 2, 7],           # forward itself
    [0, 1, 2, 11, 12],      # json under the access log: access log
    [0, 1, 2, 13],          # metrics
    [0, 1, 14],             # aiohttp's router (a shortened file name): the server
    [0, 1, 2],              # Keystile's own glue
    [0, 6],                 # asyncio alone: the event loop
    [16, 0, 6],             # the worker's entry around the loop: still the loop
    [0, 1, 2, 18, 17],      # a helper of Keystile's under a stage: that stage
    [16, 19, 20],           # the usage write-behind, PostgreSQL's client under it
]
WEIGHTS = [10, 20, 5, 3, 30, 12, 8, 6, 4, 2, 7, 3, 2, 4, 1]


def test_each_sample_goes_to_the_innermost_frame_a_rule_claims(tmp_path: Path) -> None:
    path = tmp_path / "K1-1.json"
    path.write_text(json.dumps(_speedscope(SAMPLES, WEIGHTS)))

    counted = breakdown.load([path])

    assert counted == Counter({
        breakdown.REDIS: 10, breakdown.LIMITS: 20, "stage: limits": 5, "stage: lookup": 3,
        breakdown.UPSTREAM: 30, breakdown.RESPONSE: 12, breakdown.FORWARD: 8,
        breakdown.ACCESS_LOG: 6, breakdown.METRICS: 4, breakdown.SERVER: 2,
        breakdown.GLUE: 7, breakdown.LOOP: 5, "stage: parse": 4, breakdown.USAGE: 1})


def test_the_workers_files_add_up_and_missing_weights_count_one(tmp_path: Path) -> None:
    one, two = tmp_path / "K1-1.json", tmp_path / "K1-2.json"
    one.write_text(json.dumps(_speedscope(SAMPLES, WEIGHTS)))
    unweighted = _speedscope([[0, 1, 2, 7], [0, 6]], [1, 1])
    del unweighted["profiles"][0]["weights"]
    two.write_text(json.dumps(unweighted))

    counted = breakdown.load([one, two])

    assert counted[breakdown.FORWARD] == 9 and counted[breakdown.LOOP] == 6


def test_the_breakdown_gives_each_share_of_the_cpu_per_request_in_request_order() -> None:
    samples = Counter({breakdown.LOOP: 25, breakdown.REDIS: 25, "stage: scope": 10,
                       breakdown.SERVER: 40})

    result = breakdown.per_request(samples, 200.0)

    assert result["sampled_s"] == 100 and result["cpu_us_per_req"] == 200.0
    assert [(r["where"], r["share"], r["us_per_req"]) for r in result["rows"]] == [
        (breakdown.SERVER, 0.4, 80.0), ("stage: scope", 0.1, 20.0),
        (breakdown.REDIS, 0.25, 50.0), (breakdown.LOOP, 0.25, 50.0)]
    table = breakdown.markdown("K1", result)
    assert table[0] == "| where K1's gateway CPU goes | µs/req | share |"
    assert f"| {breakdown.REDIS} | 50 | 25% |" in table
    assert table[-1] == "| total (100 s sampled) | 200 | 100% |"


def test_no_samples_say_so_rather_than_divide_by_zero() -> None:
    result = breakdown.per_request(Counter(), 300.0)

    assert result["rows"] == [] and result["sampled_s"] == 0
    assert "could not record" in breakdown.markdown("K1", result)[0]


def test_a_frame_in_shared_code_is_left_to_its_caller() -> None:
    assert breakdown.category(Frame("write", f"{SITE}/aiohttp/http_writer.py")) is None
    assert breakdown.category(Frame("feed_data", f"{SITE}/aiohttp/http_parser.py")) is None
    assert breakdown.category(Frame("hash_key", "/repo/gateway/keyformat.py")) is None
    assert breakdown.category(Frame("check", "/repo/gateway/stages/scope.py")) == "stage: scope"
