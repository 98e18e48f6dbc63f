"""``keystile cluster-check`` (``make cluster-check``) as a user runs it: a topology of real
processes — PostgreSQL primary and streaming replica, a Redis Cluster of three masters and
three replicas, the admin API, two gateway hosts of two workers on 127.0.0.2 and 127.0.0.3 —
on free ports, every check run against it, and every one of its processes gone afterwards.
The same checks and sizes as ``make cluster-check``."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from tests.keystile.conftest import Cli, cli  # noqa: F401

TIME_LIMIT_S = 240.0  # about 40-60 s on the 2-core development machine

CHECKS = (
    "new key works on every worker of both hosts",
    "1000 concurrent requests over both hosts, usage_limit 100",
    "revocation refused on every worker of both hosts",
    "Redis master killed under load: replica takes over, both hosts keep serving",
    "one gateway host killed: the other keeps serving",
    "PostgreSQL primary stopped: known keys served, admin 503, all recovers",
    "nothing over-spent, no usage lost beyond the write-behind bound",
    "no 500, no error logged, no worker lost on any host",
)


def _free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # A listener still there refuses the bind; connections in TIME_WAIT do not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _endpoints(layout: dict[str, Any]) -> list[tuple[str, int]]:
    single = [layout[name] for name in ("admin", "postgres", "replica", "upstream")]
    return [(e["host"], e["port"]) for e in [*layout["gateways"], *single, *layout["redis"]]]


def _mentioning(folder: Path) -> list[str]:
    """Processes whose command line names ``folder`` (the gateway hosts' configuration,
    PostgreSQL's data directories)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if str(folder) in line:
            found.append(f"{proc.pid}: {line}")
    return found


def test_cluster_check_passes_and_leaves_nothing_running(cli: Cli,  # noqa: F811
                                                         tmp_path: Path) -> None:
    data_dir, report = tmp_path / "cluster", tmp_path / "report.json"
    started = time.monotonic()
    done = cli.run("cluster-check", "--keys", "20", "--load", "16", "--json", str(report),
                   "--data-dir", str(data_dir), timeout=TIME_LIMIT_S)
    took = time.monotonic() - started
    print(done.stdout)  # the report, with its figures, for whoever reads the test's output
    assert report.exists(), f"no report; stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    result = orjson.loads(report.read_bytes())
    verdicts = {check["name"]: check for check in result["checks"]}
    assert tuple(verdicts) == CHECKS, done.stdout
    failed = [f"{name}: {check['summary']}" for name, check in verdicts.items()
              if not check["ok"]]
    assert not failed, "\n".join(failed)
    assert done.returncode == 0, done.stderr
    assert f"{len(CHECKS)} of {len(CHECKS)} checks passed" in done.stdout

    # The figures behind the verdicts are what the report says they are.
    limit = verdicts[CHECKS[1]]["figures"]
    assert (limit["upstream_received"], limit["pg_usage_count"]) == (100, 100)
    assert limit["statuses"] == {"200": 100, "429": 900}
    for name in (CHECKS[0], CHECKS[2]):
        figures = verdicts[name]["figures"]
        assert figures["workers"] == 4 and figures["p99_ms"] <= 100, figures
    failover = verdicts[CHECKS[3]]["figures"]
    assert failover["promoted"] != failover["killed_master"]
    # Redis replicates asynchronously: the count may differ by the requests in flight.
    assert abs(failover["redis_live_count"] - failover["upstream_received"]) \
        <= failover["load_concurrency"]
    postgres = verdicts[CHECKS[5]]["figures"]
    assert {a["status"] for a in postgres["admin_answers"]} == {503}
    assert postgres["pg_usage_count"] == postgres["upstream_received"]
    accounting = verdicts[CHECKS[6]]["figures"]
    assert accounting["over_spent_keys"] == {}
    assert accounting["lost"] <= accounting["lost_bound"]

    # Every process of the topology is gone: its ports are free, nothing names its folder.
    assert _mentioning(data_dir) == []
    busy = [f"{h}:{p}" for h, p in _endpoints(result["layout"]) if not _free(h, p)]
    assert busy == []
    print(f"cluster-check took {took:.0f} s")
