"""The propagation benchmark runs end to end (a handful of changes; numbers are not judged
here — `make bench` prints them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "propagation.py"


async def test_propagation_benchmark_runs() -> None:
    spec = importlib.util.spec_from_file_location("propagation", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = await module.run(changes=4, workers=2)
    assert result["changes"] == 4 and result["workers"] == 2
    assert {"p50_ms", "p99_ms", "max_ms"} <= set(result)
    assert result["revocations"]["count"] == 1 and result["plain_requests"]["max_ms"] > 0
