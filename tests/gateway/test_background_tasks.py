"""Background tasks end when the gateway stops, even one that lost a cancellation."""

from __future__ import annotations

import asyncio

from gateway.app import _cancel


async def test_a_task_that_loses_a_cancellation_is_cancelled_again() -> None:
    lost = 0

    async def listener() -> None:
        """Loses the first cancellation, as a loop around ``asyncio.wait_for`` can on
        Python 3.11 (when what it waits for completes at that moment), and runs on."""
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1

    task = asyncio.create_task(listener())
    await asyncio.sleep(0)
    await asyncio.wait_for(_cancel(task), timeout=10)
    assert task.cancelled() and lost == 1
