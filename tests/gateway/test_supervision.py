"""Restarting dead workers: each slot has its own delay, which doubles while its worker keeps
dying and is short again once a worker ran stably; a slot waiting to restart never holds up
another slot's restart or the supervisor's own shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from gateway.supervision import Backoff
from keystile.embedded import free_port
from tests.conftest import Stores
from tests.gateway.conftest import Upstream
from tests.keystile.conftest import Cli, cli  # noqa: F401


def test_backoff_doubles_up_to_its_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(initial_s=1.0, max_s=30.0, stable_s=60.0)
    clock = 0.0
    delays = []
    for _ in range(7):  # a worker that dies 5 s after each start
        delays.append(backoff.after_exit(started=clock, died=clock + 5.0))
        clock += 5.0 + delays[-1]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    # It then ran for a minute: the next crash is treated as the first again.
    assert backoff.after_exit(started=clock, died=clock + 60.0) == 1.0
    assert backoff.after_exit(started=clock + 61.0, died=clock + 62.0) == 2.0


def test_each_slot_has_its_own_backoff() -> None:
    template = Backoff(initial_s=0.5, max_s=4.0, stable_s=10.0)
    first, second = dataclasses.replace(template), dataclasses.replace(template)
    assert [first.after_exit(0.0, 1.0) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert second.after_exit(0.0, 1.0) == 0.5


# The supervisor as `keystile gateway` runs it, with a short restart policy.
SUPERVISOR = """
import logging, sys
from pathlib import Path
from gateway.server import serve
from gateway.settings import load
from gateway.supervision import Backoff
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
serve(load(Path(sys.argv[1])), 2, Backoff(initial_s=0.2, max_s=3.2, stable_s=1.5))
"""

RESTART = re.compile(r"gateway worker (\d+) exited with -9; restarting in ([\d.]+) s")


def _start_supervisor(config: Path, stores: Stores) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(config)], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
        env={**os.environ, "KEYSTILE_DATABASE_URL": stores.database_url,
             "KEYSTILE_REDIS_URL": stores.redis_url})


def _workers(supervisor: subprocess.Popen[str]) -> set[int]:
    """The live workers (not the dead ones the supervisor has yet to reap)."""
    pids = set()
    for child in psutil.Process(supervisor.pid).children():
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:  # exited, or a zombie
            pass
    return pids


async def _replaced(supervisor: subprocess.Popen[str], dead: int, others: set[int],
                    timeout: float) -> tuple[int, float]:
    """The pid of the worker started in place of ``dead``, and how long that took."""
    started = time.monotonic()
    while True:
        new = _workers(supervisor) - others - {dead}
        if new:
            return new.pop(), time.monotonic() - started
        assert time.monotonic() - started < timeout, f"worker {dead} not replaced in {timeout} s"
        await asyncio.sleep(0.02)


async def test_killed_workers_come_back_each_on_its_own_delay(
        cli: Cli, stores: Stores, upstream: Upstream, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nport = {port}\n[[routes]]\nprefix = "/svc"\n'
                      f'upstream = "{upstream.url}"\n')
    supervisor = _start_supervisor(config, stores)
    cli.procs.append(supervisor)  # killed at the end whatever happens
    await asyncio.to_thread(cli.read_until, supervisor, f"listening on http://127.0.0.1:{port}")
    a, b = sorted(_workers(supervisor))

    # Both die at once: both are back within their first delay (0.2 s), not one after the
    # other.
    os.kill(a, signal.SIGKILL)
    os.kill(b, signal.SIGKILL)
    a, took_a = await _replaced(supervisor, a, {b}, timeout=3)
    b, took_b = await _replaced(supervisor, b, {a}, timeout=3)
    assert max(took_a, took_b) < 1.0, (took_a, took_b)

    # Slot A crashes again and again: 0.4, 0.8, 1.6 s ...
    for _ in range(3):
        os.kill(a, signal.SIGKILL)
        a, _ = await _replaced(supervisor, a, {b}, timeout=5)
    # ... and while A waits 3.2 s for its next restart, B's death is handled at once.
    os.kill(a, signal.SIGKILL)
    waiting_a = a
    # A's death is noticed (its 3.2 s delay chosen) before B dies.
    noticed = await asyncio.to_thread(cli.read_until, supervisor, "restarting in 3.2 s", 5)
    os.kill(b, signal.SIGKILL)
    b, took_b = await _replaced(supervisor, b, {waiting_a}, timeout=3)
    assert took_b < 1.0, took_b
    a, took_a = await _replaced(supervisor, waiting_a, {b}, timeout=6)

    # A now runs stably (longer than stable_s = 1.5 s): its next crash gets the short delay.
    await asyncio.sleep(2.0)  # the stable run is the point of this step, not a wait for state
    os.kill(a, signal.SIGKILL)
    a, took_a = await _replaced(supervisor, a, {b}, timeout=3)
    assert took_a < 1.0, took_a

    # SIGTERM stops everything promptly.
    code, rest = await asyncio.to_thread(cli.stop, supervisor, 20)
    out = noticed + rest
    assert code == 0, out
    # The delays the supervisor chose, in order: both first deaths 0.2 s; A doubling while
    # it keeps dying; B (which had run stably) 0.2 s; A after its stable run 0.2 s again.
    assert [float(d) for _, d in RESTART.findall(out)] == [
        0.2, 0.2, 0.4, 0.8, 1.6, 3.2, 0.2, 0.2], out
