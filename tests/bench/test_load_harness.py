"""`make bench` (bench/load.py) runs end to end with tiny durations: every setup (KC on a real
Redis Cluster), the scale and soak cases, the limit-memory check, and the three result files.
Numbers are not judged here — the benchmark prints them — but KC's correctness check is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).parents[2]
SETUPS = ("B0", "B1", "B2", "B3", "B4", "K1", "K2", "KC", "B1@1", "B3@1", "K1@1")
FIELDS = {"rps", "p50_ms", "p99_ms", "max_ms", "cpu_us_per_req", "redis_cmds_per_req",
          "redis_cpu_us_per_req", "redis_limit_state_bytes", "rss_mb", "statuses", "requests"}


def test_the_load_benchmark_runs_and_writes_its_results(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.process_iter()}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--seconds", "1", "--warmup", "1",
         "--keys", "300", "--cluster-keys", "200", "--scale-keys", "3000", "--scale-samples", "50",
         "--soak-requests", "300", "--limit-spends", "12000", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    for name in SETUPS:
        row = results[name]
        assert set(row) >= FIELDS, (name, row)
        assert row["requests"] > 0 and row["rps"] > 0
        assert sum(n for code, n in row["statuses"].items()
                   if code != "socket_errors") == row["requests"]
    # Every setup refuses what it should: the keyless baselines pass all, the key checks don't.
    assert set(results["B1"]["statuses"]) == {"200"}
    assert {"200", "401"} <= set(results["B2"]["statuses"])
    for name in ("K1", "K2"):
        assert {"200", "401", "429"} <= set(results[name]["statuses"]), results[name]
    for name in ("K1", "K2", "KC"):
        assert results[name]["redis_cmds_per_req"] > 0
        assert results[name]["redis_cpu_us_per_req"] > 0
        assert results[name]["redis_limit_state_bytes"] > 0
    assert results["B1"]["redis_limit_state_bytes"] is None  # no limits, no limit state
    # B4: Keystile on its route without keys: everything passes, nothing is asked of Redis
    # for it, no limit state is made.
    assert set(results["B4"]["statuses"]) == {"200"}
    assert results["B4"]["redis_limit_state_bytes"] == 0
    assert results["B4"]["redis_round_trips_per_req"] < 0.01  # background ones only
    # The one-connection runs use their setup's processes: K1@1 checks keys as K1 does.
    assert {"200", "401"} <= set(results["K1@1"]["statuses"])
    assert set(results["B3@1"]["statuses"]) == {"200"}
    assert results["K1@1"]["redis_limit_state_bytes"] > 0
    # KC: one organisation, so one master holds all its limit state and runs its scripts;
    # the figures of the row are the masters' sums.
    kc = results["KC"]
    assert kc["org_keys"] == 200 and set(kc["statuses"]) <= {"200", "429"}, kc["statuses"]
    masters = kc["redis_masters"]
    assert len(masters) == 3 and sum(m["slots"] for m in masters) == 16384
    home = [m for m in masters if m["serves_org"]]
    assert len(home) == 1 and home[0]["redis_limit_state_bytes"] > 0
    assert home[0]["redis_limit_state_keys"] > 200  # every key's state, its owners', the org's
    assert all(m["redis_limit_state_keys"] == 0 for m in masters if not m["serves_org"])
    for field in ("redis_limit_state_bytes", "redis_limit_state_keys"):
        assert kc[field] == sum(m[field] for m in masters)
    assert kc["redis_cmds_per_req"] == pytest.approx(
        sum(m["redis_cmds_per_req"] for m in masters), abs=0.005)
    # A few keys with usage_limit 50: exactly 50 reached the upstream and PostgreSQL.
    check = kc["correctness"]
    assert kc["correct"] is True, check
    assert check["limited_keys"] >= 3 and check["usage_limit"] == 50
    assert all(k["upstream_received"] == k["pg_usage_count"] == 50 and k["burst_429"] > 0
               for k in check["keys"]), check
    assert {"K1/B1_rps", "K1/B2_rps", "K1/B3_rps", "K1/B3_cpu", "K2/B3_cpu",
            "K1/B3_redis_cpu", "K1+redis/B3_cpu", "K1/B4_cpu", "K2_p99/K1_p99",
            "K1@1-B3@1_p50_ms", "K1@1-B3@1_p99_ms"} <= set(results["ratios"])
    assert all(g["value"] is not None for g in results["goals"]), results["goals"]
    assert results["run"]["machine"]["cpus"] == results["run"]["cpus"]
    assert results["scale"]["large_keys"] == 3000 and results["scale"]["small"]["p99_ms"] > 0
    assert results["soak"]["requests"] >= 300 and results["soak"]["rss_end_mb"]
    # The limit-memory check stops at each checkpoint below its total, then at the total.
    assert set(results["limit_memory"]) == {"10000", "12000"}
    assert all(size > 0 for size in results["limit_memory"].values())
    assert results["limit_memory_run"]["refused"] == 0
    table = (tmp_path / "latest.md").read_text()
    assert all(f"| {name} " in table for name in SETUPS)
    assert "the organisation’s" in table and "correct: true" in table
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing it started is left running. What it starts runs in this checkout (cwd=ROOT),
    # but Redis servers, which move into their data folder under the run's work folder
    # (keystile-load-*); another Keystile on the machine, or another checkout's tests, may
    # come and go meanwhile.
    leftovers = [p for p in psutil.process_iter(["pid", "name", "cmdline", "cwd"])
                 if p.pid not in before and p.info["cmdline"] and (
                     (p.info["cwd"] == str(ROOT.resolve())
                      and any(w in " ".join(p.info["cmdline"])
                              for w in ("nginx", "bareproxy", "keystile.cli gateway", "wrk")))
                     or ("redis-server" in " ".join(p.info["cmdline"])
                         and "keystile-load-" in (p.info["cwd"] or "")))]
    assert not leftovers, leftovers
