"""Idle keep-alive connections to one origin. The most recently used is reused first, so
surplus connections age out; an idle one the upstream closed, or sent anything on, is never
handed out (a request that was never sent is the only one that may take another)."""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.upstream.connection import Connection


class Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout_s: float,
                 max_idle: int) -> None:
        self._loop = loop
        self._idle_timeout_s = idle_timeout_s
        self._max_idle = max_idle
        self._idle: deque[Connection] = deque()  # oldest first
        self._sweep_at: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: Connection) -> None:
        if len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        if self._sweep_at is None:
            self._sweep_at = self._loop.call_at(conn.idle_since + self._idle_timeout_s,
                                                self._sweep)

    def _sweep(self) -> None:
        """Closes connections idle for longer than the idle timeout (one timer per pool, not
        one per connection)."""
        self._sweep_at = None
        idle = self._idle
        expired = self._loop.time() - self._idle_timeout_s
        while idle and (idle[0].idle_since <= expired or idle[0].closed):
            idle.popleft().close()
        if idle:
            self._sweep_at = self._loop.call_at(idle[0].idle_since + self._idle_timeout_s,
                                                self._sweep)

    def close(self) -> None:
        if self._sweep_at is not None:
            self._sweep_at.cancel()
            self._sweep_at = None
        while self._idle:
            self._idle.pop().close()
