"""bench/instructions.py reads callgrind's dumps: the count it divides by requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.instructions import _totals


def test_the_count_is_the_dump_totals(tmp_path: Path) -> None:
    dump = tmp_path / "cg.1.2"
    dump.write_text("# callgrind format\nversion: 1\nevents: Ir\nfn=main\n5 12\n"
                    "summary: 123456\ntotals: 123456\n")
    assert _totals(dump) == 123456


def test_a_dump_without_a_count_is_an_error_not_zero(tmp_path: Path) -> None:
    dump = tmp_path / "cg.1.1"
    dump.write_text("# callgrind format\nevents: Ir\n")
    with pytest.raises(RuntimeError, match="no instruction count"):
        _totals(dump)
