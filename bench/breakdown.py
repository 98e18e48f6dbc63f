"""Where a Keystile setup's CPU goes, per request: the py-spy speedscope files that
``bench/load.py --profile K1`` records (one per worker, ``--gil``: only samples holding the
GIL, i.e. burning CPU in Python or in C called from it) split into the stages of a request,
each given as its share of the samples × the run's CPU µs per request.

A sample goes to the category of its innermost frame that matches a rule of ``RULES`` (tried
in order on that frame): a frame in code shared by several callers (aiohttp's HTTP writer and
parser, asyncio, json) matches none and leaves the sample to its caller — the writer under
our response is the response, under the upstream client the upstream client. What no frame
claims is the event loop itself and the syscalls it makes.

    .venv/bin/python bench/breakdown.py                  # K1 of bench/results/last-run/
    .venv/bin/python bench/breakdown.py --setup K2
    .venv/bin/python bench/breakdown.py FILE... --cpu-us-per-req 455
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAST_RUN = Path(__file__).parent / "results" / "last-run"

SERVER = "aiohttp server: parsing, handling"
STAGE = "stage: "  # + the module's name under gateway/stages/
LIMITS = "limits engine (gateway/limits)"
REDIS = "Redis client (redis-py)"
FORWARD = "forwarding (gateway/proxy.py itself)"
UPSTREAM = "upstream client (aiohttp ClientSession)"
RESPONSE = "response prepare/write (aiohttp)"
ACCESS_LOG = "access log (gateway/accesslog.py, logging)"
METRICS = "metrics (prometheus_client)"
USAGE = "usage write-behind (gateway/usage.py, asyncpg)"
GLUE = "other Keystile code (app, pipeline, exchange, connections)"
LOOP = "event loop, syscalls, the rest"

# (category, what the frame's file path contains), tried in order on each frame. Paths are
# matched with a leading "/" so that py-spy's full and shortened file names both match.
RULES: tuple[tuple[str, str], ...] = (
    (ACCESS_LOG, "/gateway/accesslog.py"),
    (ACCESS_LOG, "/logging/"),
    (METRICS, "/prometheus_client/"),
    (METRICS, "/gateway/metrics.py"),
    (REDIS, "/redis/"),
    (REDIS, "/gateway/redisclient.py"),
    (LIMITS, "/gateway/limits/"),
    (STAGE, "/gateway/stages/"),
    (USAGE, "/gateway/usage.py"),
    (USAGE, "/asyncpg/"),
    (UPSTREAM, "/aiohttp/client"),  # client.py, client_reqrep.py, client_proto.py, …
    (UPSTREAM, "/aiohttp/connector.py"),
    (FORWARD, "/gateway/proxy.py"),
    (RESPONSE, "/aiohttp/web_response.py"),
    (SERVER, "/aiohttp/web_"),  # web_protocol.py, web_request.py, web_app.py, …
    # Keystile's own frame around every request. Its helpers (keyformat, keycache, routing,
    # paths, scopes, …) are left to their caller: under a stage they are that stage's work.
    # gateway/server.py only starts the worker's event loop: what is left under it is the loop.
    (GLUE, "/gateway/app.py"),
    (GLUE, "/gateway/pipeline.py"),
    (GLUE, "/gateway/exchange.py"),
    (GLUE, "/gateway/connections.py"),
    (GLUE, "/gateway/errors.py"),
)

ORDER = (SERVER, STAGE, LIMITS, REDIS, FORWARD, UPSTREAM, RESPONSE, ACCESS_LOG, METRICS, USAGE,
         GLUE, LOOP)


@dataclass(frozen=True)
class Frame:
    name: str
    file: str


def category(frame: Frame) -> str | None:
    """The category ``frame`` belongs to, or None: code shared by several (its caller
    decides)."""
    path = "/" + frame.file.replace("\\", "/").lstrip("/")
    for name, part in RULES:
        if part in path:
            if name == STAGE:
                return STAGE + path.rsplit("/", 1)[-1].removesuffix(".py")
            return name
    return None


def classify(stack: Iterable[Frame]) -> str:
    """The category of one sample, ``stack`` from the outermost frame to the innermost."""
    for frame in reversed(list(stack)):
        found = category(frame)
        if found is not None:
            return found
    return LOOP


def count(speedscope: dict[str, Any]) -> Counter[str]:
    """Sampled time per category in one speedscope file (every profile in it: py-spy writes
    one per thread; a sample weighs its seconds, or 1 without weights)."""
    frames = [Frame(f.get("name", ""), f.get("file") or "") for f in
              speedscope["shared"]["frames"]]
    out: Counter[str] = Counter()  # float weights: Counter only adds them
    for profile in speedscope["profiles"]:
        samples = profile["samples"]
        weights = profile.get("weights") or [1] * len(samples)
        for stack, weight in zip(samples, weights, strict=True):
            out[classify(frames[i] for i in stack)] += weight
    return out


def load(paths: Iterable[Path]) -> Counter[str]:
    """Sampled time per category over several files (a setup's workers)."""
    total: Counter[str] = Counter()
    for path in paths:
        total.update(count(json.loads(path.read_text())))
    return total


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(STAGE) if name.startswith(STAGE) else ORDER.index(name), name)


def per_request(samples: Counter[str], cpu_us_per_req: float) -> dict[str, Any]:
    """Each category's share of the samples and its µs per request (share × the run's CPU
    µs per request), in the order a request meets them."""
    total = sum(samples.values())
    if total <= 0:  # py-spy could not attach (ptrace not permitted?) or saw nothing
        return {"sampled_s": 0, "cpu_us_per_req": cpu_us_per_req, "rows": []}
    rows = [{"where": name, "share": round(n / total, 4),
             "us_per_req": round(cpu_us_per_req * n / total, 1)}
            for name, n in sorted(samples.items(), key=lambda item: _rank(item[0]))]
    return {"sampled_s": round(total, 3), "cpu_us_per_req": cpu_us_per_req, "rows": rows}


def markdown(setup: str, result: dict[str, Any]) -> list[str]:
    """The breakdown as a Markdown table."""
    if not result["rows"]:
        return [f"No samples of {setup}: py-spy could not record its workers."]
    out = [f"| where {setup}'s gateway CPU goes | µs/req | share |", "|---|---|---|"]
    out += [f"| {row['where']} | {row['us_per_req']:.0f} | {row['share']:.0%} |"
            for row in result["rows"]]
    out.append(f"| total ({result['sampled_s']:g} s sampled) | "
               f"{result['cpu_us_per_req']:.0f} | 100% |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="speedscope files (default: the setup's in last-run/profiles/)")
    parser.add_argument("--setup", default="K1")
    parser.add_argument("--cpu-us-per-req", type=float,
                        help="the run's CPU µs per request (default: from last-run)")
    args = parser.parse_args()
    files = args.files or sorted((LAST_RUN / "profiles").glob(f"{args.setup}-*.json"))
    if not files:
        parser.error(f"no speedscope files: run `bench/load.py --profile {args.setup}` first "
                     "or name the files")
    cpu = args.cpu_us_per_req
    if cpu is None:
        try:
            cpu = json.loads((LAST_RUN / "latest.json").read_text())[args.setup][
                "cpu_us_per_req"]
        except (OSError, KeyError, ValueError):
            parser.error("give --cpu-us-per-req (no figure for the setup in last-run)")
    print("\n".join(markdown(args.setup, per_request(load(files), float(cpu)))))


if __name__ == "__main__":
    main()
