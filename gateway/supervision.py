"""Child processes that must not outlive the process that started them (Linux), and the
restart delay of a worker that keeps dying."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def die_with_parent_hook(sig: int) -> Callable[[], None]:
    """The same, as a ``preexec_fn`` for ``subprocess.Popen``."""
    return lambda: die_with_parent(sig)


@dataclass
class Backoff:
    """The restart delay of one worker slot: it doubles while the worker keeps dying soon
    after it starts (1, 2, 4 … ``max_s``), and is back to ``initial_s`` once a worker has run
    ``stable_s`` — a worker that crashed at start-up an hour ago is not still being punished.
    Pure: the caller says when the worker started and when it died."""

    initial_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0
    _next_s: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._next_s = self.initial_s

    def after_exit(self, started: float, died: float) -> float:
        """The delay before restarting a worker that ran from ``started`` to ``died``."""
        if died - started >= self.stable_s:
            self._next_s = self.initial_s
        delay = self._next_s
        self._next_s = min(delay * 2, self.max_s)
        return delay
