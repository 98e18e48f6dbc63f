"""Runs the ``keystile`` command as a user would, as a child process."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

KEYSTILE = [sys.executable, "-m", "keystile.cli"]


class Cli:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.readers: dict[int, queue.Queue[str | None]] = {}

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*KEYSTILE, *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=timeout, check=False)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*KEYSTILE, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def read_until(self, proc: subprocess.Popen[str], marker: str, timeout: float = 60) -> str:
        """Output up to and including the line containing ``marker``."""
        lines = self._lines(proc)
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if marker in line:
                return "".join(seen)
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"{marker!r} not printed; output was:\n{''.join(seen)}")

    def printed(self, proc: subprocess.Popen[str]) -> str:
        """What ``proc`` has printed and no read has taken yet (for a failure's message)."""
        lines, seen = self._lines(proc), []
        while True:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                return "".join(seen)
            if line is None:
                return "".join(seen)
            seen.append(line)

    def _lines(self, proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
        """A reader thread per process, so waiting for a line can time out."""
        if proc.pid not in self.readers:
            lines: queue.Queue[str | None] = queue.Queue()

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            self.readers[proc.pid] = lines
        return self.readers[proc.pid]

    def stop(self, proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
        """SIGTERM, then the exit code and whatever was printed after the last read."""
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
        lines = self._lines(proc)
        rest = []
        while (line := lines.get(timeout=timeout)) is not None:
            rest.append(line)
        return proc.returncode, "".join(rest)


@pytest.fixture
def cli() -> Iterator[Cli]:
    runner = Cli()
    yield runner
    for proc in runner.procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
