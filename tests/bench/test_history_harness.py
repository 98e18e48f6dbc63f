"""The request-history benchmark runs end to end on a small history; numbers are not judged
here — `make bench-history` prints them."""

from __future__ import annotations

import argparse

import pytest

from bench import history


async def test_history_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(keys=40, orgs=2, owners=2, busy=0.5, runs=2, flush_keys=20)
    assert await history.run(args) == 0
    out = capsys.readouterr().out
    assert "history of 40 keys" in out and "usage_org_hours" in out
    for line in ("series, one key, 30d", "series, everything, day", "limited now, one org",
                 "flush write, 20 keys", "counting one request"):
        assert line in out, out
