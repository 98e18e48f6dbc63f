"""The benchmark's pure parts: where a run writes (a clean checkout stays clean), the setups
at another connection count, issue 14's ratios and goals, and the report's order. No timing
is judged here."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import load, report

ROOT = Path(__file__).parents[2]


def _row(rps: float, cpu: float, p50: float = 1.0, p99: float = 2.0, redis_cpu: float = 0.0
         ) -> dict[str, Any]:
    return {"title": "t", "rps": rps, "p50_ms": p50, "p99_ms": p99, "max_ms": p99,
            "cpu_us_per_req": cpu, "redis_cpu_us_per_req": redis_cpu,
            "redis_cmds_per_req": 0.0, "redis_round_trips_per_req": 0.0, "rss_mb": 30.0,
            "redis_limit_state_bytes": None, "redis_limit_state_keys": None,
            "requests": 100, "statuses": {"200": 100}}


def _results() -> dict[str, Any]:
    return {"B0": _row(40_000, 18, p99=2.0),
            "B3": _row(4_000, 200),
            "B4": _row(3_000, 250),
            "K1": _row(3_400, 240, p99=20.0, redis_cpu=60),
            "K2": _row(3_600, 220, p99=30.0, redis_cpu=20),
            "B3@1": _row(2_000, 300, p50=0.40, p99=0.90),
            "K1@1": _row(1_500, 380, p50=0.65, p99=2.10)}


def test_the_ratios_include_every_goal_of_issue_14() -> None:
    ratios = load.ratios(_results())

    assert ratios["K1/B3_cpu"] == 1.2
    assert ratios["K1+redis/B3_cpu"] == 1.5  # (240 + 60) / 200
    assert ratios["K2/B3_cpu"] == 1.1
    assert ratios["K1/B4_cpu"] == 0.96
    assert ratios["B4/B3_cpu"] == 1.25
    assert ratios["K1/B3_rps"] == 0.85
    assert ratios["K2_p99/K1_p99"] == 1.5
    assert ratios["K1@1-B3@1_p50_ms"] == 0.25
    assert ratios["K1@1-B3@1_p99_ms"] == 1.2
    # The ones the README quoted before are kept.
    assert ratios["K1/B3_redis_cpu"] == 0.3
    assert ratios["K1-B0_p99_ms"] == 18.0


def test_a_ratio_whose_setup_did_not_run_is_left_out() -> None:
    results = _results()
    for name in ("B4", "K2", "K1@1"):
        del results[name]

    ratios = load.ratios(results)

    assert "K1/B4_cpu" not in ratios and "K2_p99/K1_p99" not in ratios
    assert not any(k.startswith("K1@1") for k in ratios)
    assert ratios["K1/B3_cpu"] == 1.2


def test_each_goal_is_judged_against_its_target() -> None:
    goals = {g["ratio"]: g for g in load.goals(load.ratios(_results()))}

    assert [g[1] for g in load.GOALS] == list(goals)  # every goal, in the issue's order
    assert goals["K1/B3_cpu"]["reached"] is True  # 1.2 ≤ 1.3
    assert goals["K1+redis/B3_cpu"]["reached"] is True  # 1.5 ≤ 1.5: the target itself passes
    assert goals["K2/B3_cpu"]["reached"] is True
    assert goals["K1/B4_cpu"]["reached"] is True
    assert goals["K1/B3_rps"]["reached"] is True  # 0.85 ≥ 0.8
    assert goals["K2_p99/K1_p99"]["reached"] is False  # 1.5 > 1.2
    assert goals["K1@1-B3@1_p50_ms"]["reached"] is True  # 0.25 ≤ 0.3
    assert goals["K1@1-B3@1_p99_ms"] == {
        "goal": "at 1 connection, K1's p99 at most 1 ms above B3's",
        "ratio": "K1@1-B3@1_p99_ms", "op": "<=", "target": 1.0, "value": 1.2,
        "reached": False}


def test_a_goal_without_its_setups_is_neither_reached_nor_missed() -> None:
    goals = {g["ratio"]: g for g in load.goals({"K1/B3_rps": 0.5})}

    assert goals["K1/B3_rps"]["reached"] is False  # a "≥" goal below its target
    assert goals["K1/B4_cpu"]["value"] is None and goals["K1/B4_cpu"]["reached"] is None


def test_the_report_puts_goals_first_then_ratios_then_figures_and_names_the_machine(
        ) -> None:
    results = _results()
    results["ratios"] = load.ratios(results)
    results["goals"] = load.goals(results["ratios"])
    results["run"] = {"seconds": 1.0, "keys": 10, "connections": 16, "warmup_s": 1,
                      "measured_s": 2, "cpus": 2, "prewarm_s": {},
                      "machine": {"cpus": 2, "cpu_model": "AMD EPYC", "kernel": "Linux 6.1"}}

    text = report.markdown(results)

    goals, ratios, figures = (text.index("| goal (issue 14) |"), text.index("| ratio | value |"),
                              text.index("| setup |"))
    assert goals < ratios < figures
    assert text.startswith("Machine: 2 CPUs (AMD EPYC), Linux 6.1.")
    assert "| K2 p99 ≤ 1.2 × K1 p99 | `K2_p99/K1_p99` | ≤ 1.2 | 1.5 | not reached |" in text
    assert "| K1 requests/s ≥ 0.8 × B3 | `K1/B3_rps` | ≥ 0.8 | 0.85 | reached |" in text
    assert "| K1@1 " in text and "| B4 " in text


def test_a_setup_at_another_connection_count_reuses_its_setup() -> None:
    assert load.parse_setup("K1", 16) == ("K1", 16)
    assert load.parse_setup("K1@1", 16) == ("K1", 1)
    assert load.parse_setup("B3@4", 16) == ("B3", 4)
    with pytest.raises(ValueError, match="SETUP@N"):
        load.parse_setup("K1@", 16)
    with pytest.raises(ValueError, match="SETUP@N"):
        load.parse_setup("K1@0", 16)


def test_the_default_setups_include_b4_and_the_one_connection_runs() -> None:
    args = load.arguments([])

    assert {"B4", "B1@1", "B3@1", "K1@1"} <= set(args.setups)
    assert args.seconds == 10  # the @1 runs get the same 10 s as every setup


def test_a_run_writes_to_last_run_unless_told_otherwise() -> None:
    assert load.arguments([]).out == ROOT / "bench" / "results" / "last-run"
    assert load.arguments(["--quick"]).out == load.LAST_RUN
    assert load.arguments(["--save"]).save is True


@pytest.mark.parametrize("argv", [["--quick", "--save"], ["--save", "--setups", "B0,K1"]])
def test_saving_refuses_a_run_that_is_not_the_full_one(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        load.arguments(argv)

    assert exited.value.code == 2
    assert "keeps only a full run" in capsys.readouterr().err


def test_unknown_setups_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load.arguments(["--setups", "B0,K9"])
    assert "unknown setup 'K9'" in capsys.readouterr().err


@pytest.mark.parametrize(("variables", "flags"), [
    ([], ""), (["QUICK=1"], " --quick"), (["SAVE=1"], " --save")])
def test_make_bench_passes_quick_and_save_and_no_other_destination(
        variables: list[str], flags: str) -> None:
    # -n: print the commands, run none; the stamp is "up to date" so only bench's shows.
    done = subprocess.run(["make", "-n", "-o", ".venv/.installed-dev", "bench", *variables],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    command = next(x for x in done.stdout.splitlines() if "bench/load.py" in x)
    assert command.split("bench/load.py", 1)[1].split() == flags.split()


def test_what_a_run_writes_is_ignored_by_git() -> None:
    paths = ["bench/results/last-run/latest.json", "bench/results/last-run/profiles/K1-1.json",
             "bench/results/profiles/K1-1.json", "bench/.tools/usr/bin/wrk"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert done.stdout.split() == paths
    kept = subprocess.run(["git", "check-ignore", "--no-index", "bench/results/latest.json"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert kept.returncode == 1  # the committed results are not ignored
