"""The webhook benchmark runs end to end and its own checks hold (every event once, in order
per key; expiry warnings once); numbers are not judged here — `make bench-webhooks` prints them."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench" / "webhooks.py"


async def test_webhook_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("webhooks_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(events=60, keys=7, batch=10, instances=2, receiver_ms=1.0,
                              backlog=200, expiring=300, timeout=60.0)
    assert await module.run(args) == 0
    out = capsys.readouterr().out
    assert "arrived 60, distinct 60, in order per key: True" in out
    assert "one claim of 32" in out
    # 300 keys expiring evenly over 30 days: the 70 inside 7 days are warned, once.
    assert "300 keys expiring over 30 days; 70 warnings announced" in out
    assert "announced again: 0" in out
