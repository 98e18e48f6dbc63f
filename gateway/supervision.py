"""Child processes that must not outlive the process that started them (Linux)."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def die_with_parent_hook(sig: int) -> Callable[[], None]:
    """The same, as a ``preexec_fn`` for ``subprocess.Popen``."""
    return lambda: die_with_parent(sig)
