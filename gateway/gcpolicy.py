"""Garbage collection for a worker that holds large, long-lived caches.

CPython's full collections walk every tracked object; with 10,000 cached keys that is a
100-300 ms pause, several times a minute under load. The worker moves what has survived into
the permanent generation (``gc.freeze``) every ``FREEZE_INTERVAL_S``, so full collections only
walk what is young. Objects are still freed by reference counting when frozen; only reference
cycles among them would be kept, so once every ``THAW_INTERVAL_S`` the worker unfreezes and
collects everything (one full pause per interval, at a random point of ±25% so that workers
started together do not pause together)."""

from __future__ import annotations

import asyncio
import gc
import random
import time

FREEZE_INTERVAL_S = 2.0
THAW_INTERVAL_S = 3600.0


async def run(freeze_interval_s: float = FREEZE_INTERVAL_S,
              thaw_interval_s: float = THAW_INTERVAL_S) -> None:
    """Until cancelled (then everything is unfrozen again)."""
    # Workers start together; spread their full collections so they do not pause at once.
    def next_thaw() -> float:
        return time.monotonic() + thaw_interval_s * random.uniform(0.75, 1.25)  # noqa: S311

    thaw_at = next_thaw()
    try:
        while True:
            await asyncio.sleep(freeze_interval_s)
            if time.monotonic() >= thaw_at:
                gc.unfreeze()
                gc.collect()
                thaw_at = next_thaw()
            gc.freeze()
    finally:
        gc.unfreeze()
