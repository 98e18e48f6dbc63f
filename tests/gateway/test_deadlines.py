"""The worker's store deadlines (gateway/deadlines.py): what overruns is cancelled at its
deadline and told so, what ended in time is never touched, and a cancellation from elsewhere
stays a cancellation. (End to end: tests/gateway/test_store_deadline.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref

import pytest

from gateway.deadlines import Deadlines


async def _checked(deadlines: Deadlines, wait: asyncio.Future[None]) -> str:
    with deadlines.start() as deadline:
        try:
            await wait
        except asyncio.CancelledError:
            if not deadlines.overran(deadline):
                raise
            return "overran"
    return "in time"


async def test_what_overruns_is_cancelled_at_its_deadline_and_can_still_answer() -> None:
    deadlines = Deadlines(0.05)
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()
    started = loop.time()
    task = asyncio.ensure_future(_checked(deadlines, never))
    assert await task == "overran"
    assert loop.time() - started >= 0.05
    assert not task.cancelled() and task.cancelling() == 0  # the cancellation taken back
    deadlines.close()


async def test_one_timer_serves_many_and_spares_what_ended_in_time() -> None:
    deadlines = Deadlines(0.05)
    loop = asyncio.get_running_loop()
    quick: list[asyncio.Future[None]] = [loop.create_future() for _ in range(5)]
    slow: list[asyncio.Future[None]] = [loop.create_future() for _ in range(5)]
    tasks = [asyncio.ensure_future(_checked(deadlines, f)) for f in (*quick, *slow)]
    await asyncio.sleep(0)  # every task is waiting, its deadline registered
    for future in quick:
        future.set_result(None)
    assert await asyncio.gather(*tasks) == ["in time"] * 5 + ["overran"] * 5


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(30)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(_checked(deadlines, never))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()


async def test_a_finished_request_is_not_kept_alive_until_its_deadline() -> None:
    """A deadline stays queued until the timer passes it; what it ran must not stay with it
    (a worker would hold every request of the last ``timeout_s`` in memory)."""
    deadlines = Deadlines(30)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    task = asyncio.ensure_future(_checked(deadlines, done))
    assert await task == "in time"
    finished = weakref.ref(task)
    del task
    await asyncio.sleep(0)  # the loop lets go of the task it just ran
    gc.collect()
    assert finished() is None
    deadlines.close()


async def test_a_cancellation_swallowed_inside_is_still_taken_back() -> None:
    """As asyncio.timeout: past the deadline, the task is not left marked as cancelling even
    when what ran inside swallowed the cancellation."""
    deadlines = Deadlines(0.05)

    async def swallowing() -> int:
        # The suppression inside, as a library that finishes its own work instead would be.
        with deadlines.start(), contextlib.suppress(asyncio.CancelledError):
            await asyncio.get_running_loop().create_future()
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert await asyncio.ensure_future(swallowing()) == 0
