"""The benchmark's results as a line per setup, a Markdown page and a PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import breakdown


def _kib(n: float) -> str:
    return f"{n / 1024:,.0f}"


COLUMNS: tuple[tuple[str, str, str | Callable[[Any], str]], ...] = (
    ("rps", "req/s", "{:,.0f}"), ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"), ("max_ms", "max ms", "{:.1f}"),
    ("cpu_us_per_req", "CPU µs/req", "{:.0f}"),
    ("redis_cpu_us_per_req", "Redis CPU µs/req", "{:.0f}"),
    ("redis_cmds_per_req", "Redis cmds/req", "{:.2f}"),
    ("redis_round_trips_per_req", "Redis round trips/req", "{:.3f}"),
    ("rss_mb", "peak RSS/worker MB", "{:.0f}"),
    ("redis_limit_state_bytes", "limit state in Redis KiB", _kib))


def _cell(row: dict[str, Any], key: str, fmt: str | Callable[[Any], str]) -> str:
    """A figure as the table shows it; "–" where the setup has none (no limit state in the
    baselines, no field in results of older runs)."""
    value = row.get(key)
    if value is None:
        return "–"
    return fmt.format(value) if isinstance(fmt, str) else fmt(value)


def _statuses(row: dict[str, Any]) -> str:
    return " · ".join(f"{code}: {n:,}" for code, n in row["statuses"].items())


def line(name: str, row: dict[str, Any]) -> str:
    cells = ", ".join(f"{title} {_cell(row, key, fmt)}" for key, title, fmt in COLUMNS)
    out = f"{name} ({row['title']}): {cells}; statuses {_statuses(row)}"
    if "correct" in row:
        out += "\n  " + "\n  ".join(cluster_lines(row))
    return out


def cluster_lines(row: dict[str, Any]) -> list[str]:
    """KC's figures per master, and its correctness check."""
    out = []
    for m in row["redis_masters"]:
        out.append(f"master :{m['port']} ({m['slots']:,} slots"
                   f"{', the organisation’s' if m['serves_org'] else ''}): Redis CPU "
                   f"{m['redis_cpu_us_per_req']:.0f} µs/req, {m['redis_cmds_per_req']:.2f} "
                   f"cmds/req, limit state {m['redis_limit_state_bytes'] or 0:,} bytes in "
                   f"{m['redis_limit_state_keys'] or 0:,} keys")
    c = row["correctness"]
    keys = c["keys"]
    out.append(
        f"correct: {str(row['correct']).lower()} — {c['limited_keys']} keys with usage_limit "
        f"{c['usage_limit']}, a burst of {c['burst_per_key']} each after the load: upstream "
        f"received {[k['upstream_received'] for k in keys]}, usage_count in PostgreSQL "
        f"{[k['pg_usage_count'] for k in keys]}, burst 200s {[k['burst_200'] for k in keys]}, "
        f"429s {[k['burst_429'] for k in keys]}")
    return out


def setups(results: dict[str, Any]) -> list[str]:
    return [name for name, row in results.items() if isinstance(row, dict) and "rps" in row]


def _reached(reached: bool | None) -> str:
    return "–" if reached is None else "reached" if reached else "not reached"


def goals_table(goals: list[dict[str, Any]]) -> list[str]:
    """Issue 14's goals: each with its target, the measured value and whether it was met."""
    out = ["| goal (issue 14) | ratio | target | measured | |", "|---|---|---|---|---|"]
    for g in goals:
        value = "–" if g["value"] is None else f"{g['value']:g}"
        out.append(f"| {g['goal']} | `{g['ratio']}` | {'≤' if g['op'] == '<=' else '≥'} "
                   f"{g['target']:g} | {value} | {_reached(g['reached'])} |")
    return out


def machine(results: dict[str, Any]) -> str:
    """Where the figures were taken (runs before the machine was recorded: its CPU count)."""
    run = results.get("run") or {}
    m = run.get("machine")
    if not m:
        return f"{run.get('cpus', '?')} CPUs"
    return f"{m['cpus']} CPUs ({m['cpu_model']}), {m['kernel']}"


def markdown(results: dict[str, Any]) -> str:
    """Goals first, then the ratios, then the absolute figures (compare ratios: absolute
    figures move with the machine and its neighbours)."""
    out = [f"Machine: {machine(results)}.", ""]
    if results.get("goals"):
        out += [*goals_table(results["goals"]), ""]
    if results.get("ratios"):
        out += ["| ratio | value |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in results["ratios"].items()]
        out.append("")
    head = "| setup | " + " | ".join(title for _, title, _ in COLUMNS) + " | statuses |"
    out += [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name in setups(results):
        row = results[name]
        cells = " | ".join(_cell(row, key, fmt) for key, _, fmt in COLUMNS)
        out.append(f"| {name} {row['title']} | {cells} | {_statuses(row)} |")
    for name, found in (results.get("profile") or {}).items():
        out += ["", f"Profile of {name} (py-spy `--gil` on its workers during the measured "
                "run; each category's share of the samples × its CPU µs per request):", ""]
        out += breakdown.markdown(name, found)
    kc = results.get("KC")
    if kc and "correct" in kc:
        out += ["", f"KC: one organisation of {kc['org_keys']:,} keys on a Redis Cluster of 3 "
                "masters (+ 3 replicas); its limit state shares the organisation's hash tag, "
                "so one slot on one master holds it all. Per master:", ""]
        out += [f"- {text}" for text in cluster_lines(kc)]
    if results.get("scale"):
        s = results["scale"]
        out += ["", f"Key-table scale (cache-miss lookups, {s['samples']} each): "
                f"{s['small_keys']:,} keys p50 {s['small']['p50_ms']} ms / p99 "
                f"{s['small']['p99_ms']} ms; {s['large_keys']:,} keys p50 "
                f"{s['large']['p50_ms']} ms / p99 {s['large']['p99_ms']} ms "
                f"(p99 ratio {s['p99_ratio']})."]
    if results.get("soak"):
        s = results["soak"]
        out += ["", f"Soak ({s['setup']}, {s['requests']:,} requests in {s['seconds']} s): "
                f"worker RSS {s['rss_start_mb']} MB after warm-up, {s['rss_end_mb']} MB "
                f"after; largest growth {s['max_growth_pct']}%."]
    if results.get("limit_memory"):
        m, r = results["limit_memory"], results["limit_memory_run"]
        sizes = "; ".join(f"after {int(n):,}: {b:,} bytes" for n, b in m.items())
        out += ["", f"Limit state of one key in Redis (windows 1 s / 60 s / 3600 s, a daily "
                f"quota, a lifetime limit; {r['spends_per_s']:,.0f} spends/s through the "
                f"limiter, {r['refused']} refused{', stopped early' if r['stopped_early'] else ''}"
                f"): {sizes} (goal: at most {r['goal_bytes']:,} bytes)."]
    run = results.get("run")
    if run:
        out += ["", f"{run['keys']:,} keys, {run['connections']} connections, "
                f"{run['warmup_s']} s warm-up + {run['measured_s']} s per setup "
                "(the @1 setups: 1 connection), "
                f"{machine(results)}; the whole run took {run['seconds']} s."]
    return "\n".join(out) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = setups(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10.0, 1.2 * len(names)), 4))
    colours = ["#2f6db5" if results[n]["title"].startswith("Keystile") else "#888888"
               for n in names]  # B4 is Keystile too
    for axis, key, title in ((left, "rps", "requests/s (higher is better)"),
                             (right, "cpu_us_per_req",
                              "CPU µs per request, proxy processes (lower is better)")):
        values = [float(results[n][key]) for n in names]
        bars = axis.bar(names, values, color=colours)
        axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelsize=8, labelrotation=30)
        axis.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Keystile (blue) against nginx and a bare aiohttp proxy (grey), one run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
