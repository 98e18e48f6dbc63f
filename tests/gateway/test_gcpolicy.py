"""The worker's garbage-collection policy: survivors are frozen out of full collections, and
everything is thawed again (on schedule, and when the worker stops)."""

from __future__ import annotations

import asyncio
import contextlib
import gc

from gateway import gcpolicy


async def test_survivors_are_frozen_then_thawed_when_the_worker_stops() -> None:
    gc.unfreeze()
    task = asyncio.create_task(gcpolicy.run(freeze_interval_s=0.01, thaw_interval_s=3600))
    try:
        for _ in range(500):  # until the first freeze has happened
            if gc.get_freeze_count() > 0:
                break
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert gc.get_freeze_count() == 0


async def test_a_thaw_collects_everything_on_schedule() -> None:
    gc.unfreeze()
    task = asyncio.create_task(gcpolicy.run(freeze_interval_s=0.01, thaw_interval_s=0.0))
    try:
        for _ in range(500):
            if gc.get_freeze_count() > 0:
                break
            await asyncio.sleep(0.01)
        collections = gc.get_stats()[2]["collections"]
        for _ in range(500):  # each interval now thaws and runs a full collection
            if gc.get_stats()[2]["collections"] > collections:
                break
            await asyncio.sleep(0.01)
        assert gc.get_stats()[2]["collections"] > collections
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
