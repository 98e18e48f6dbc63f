"""The request-history benchmark runs end to end on a small history; numbers are not judged
here — `make bench-history` prints them."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench" / "history.py"


async def test_history_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("history_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(keys=40, orgs=2, owners=2, busy=0.5, runs=2, flush_keys=20)
    assert await module.run(args) == 0
    out = capsys.readouterr().out
    assert "history of 40 keys" in out and "usage_org_hours" in out
    for line in ("series, one key, 30d", "series, everything, day", "limited now, one org",
                 "flush write, 20 keys", "counting one request"):
        assert line in out, out
