"""The store deadline of the requests in a worker's pipeline, kept by ONE timer.

Every request's checks may wait on the stores for at most the same time (``[stores]
timeout_s``), so deadlines fall in the order requests arrive: a queue of them, and one timer
at the earliest still waited for, cancel what overran. ``asyncio.timeout`` does the same with
a timer of the event loop's per request: about 8 µs of CPU each on the development machine,
against 2 for this."""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class Deadline:
    """One request's: ``expired`` once it was cancelled for overrunning."""

    __slots__ = ("_owner", "active", "at", "expired", "taken_back", "task")

    def __init__(self, owner: Deadlines, at: float, task: asyncio.Task[object]) -> None:
        self._owner = owner
        self.at = at
        self.task: asyncio.Task[object] | None = task
        self.active = False
        self.expired = False
        self.taken_back = False  # the deadline's cancellation, once overran() saw it

    def __enter__(self) -> Deadline:
        self.active = True
        self._owner.watch(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.active = False
        if self.expired and not self.taken_back and self.task is not None:
            # Cancelled at the deadline, but the block ended otherwise (the cancellation was
            # swallowed below): taken back all the same, as asyncio.timeout does.
            self.task.uncancel()
        # It stays queued until the timer passes it: without its task, which would keep the
        # whole finished request (request, response, exchange) in memory until then.
        self.task = None


class Deadlines:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._waiting: deque[Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> Deadline:
        """``with deadlines.start() as deadline:`` around what must end in time; on
        ``CancelledError`` inside, ``overran(deadline)`` tells whether it was the deadline."""
        task = asyncio.current_task()
        assert task is not None, "a deadline belongs to a task"
        return Deadline(self, asyncio.get_running_loop().time() + self.timeout_s, task)

    def watch(self, deadline: Deadline) -> None:
        self._waiting.append(deadline)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(deadline.at, self._expire)

    @staticmethod
    def overran(deadline: Deadline) -> bool:
        """After a ``CancelledError``: True if the deadline caused it (the cancellation is
        then taken back, so the request can still be answered)."""
        task = deadline.task
        if not deadline.expired or task is None or deadline.taken_back:
            return False
        deadline.taken_back = True
        return task.uncancel() == 0

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = self._waiting
        while waiting and (waiting[0].at <= now or not waiting[0].active):
            deadline = waiting.popleft()
            if deadline.active and deadline.task is not None:
                deadline.active = False
                deadline.expired = True
                deadline.task.cancel()
        if waiting:
            self._timer = loop.call_at(waiting[0].at, self._expire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
