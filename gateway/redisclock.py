"""This process's idea of Redis's clock, so that a request's deadline can be handed to a Lua
script, which compares it with Redis ``TIME``.

Why not pass the deadline in the gateway's own clock: Redis may run on another host whose
clock is off by more than a request's budget, and then every spend would be refused (or none).
Why not a relative budget: the script cannot tell how long its command waited in a socket
buffer (a stalled Redis is exactly the case that matters). So every spend script answers with
its ``TIME``, and each answer bounds the offset between the two clocks: the script ran after
the command was sent, so ``redis_now - sent`` is at least the true offset. The smallest such
bound seen recently is the one used: a deadline converted with it is never earlier than the
true one (no request is refused that still had time), and only later by about one round
trip's latency. Bounds older than two ``EPOCH_S`` are forgotten, so a stepped clock is
followed; an answer proving the offset larger than the bound (``redis_now - received``
exceeds it) replaces the bound at once."""

from __future__ import annotations

import time

EPOCH_S = 30.0


class RedisClock:
    def __init__(self) -> None:
        self._current: float | None = None  # the smallest bound of this epoch (ms)
        self._previous: float | None = None  # ... and of the one before
        self._epoch_ends = time.monotonic() + EPOCH_S

    def observe(self, redis_now_ms: int, sent_s: float, received_s: float) -> None:
        """One script's ``TIME`` (ms), and when (``time.time()``) it was sent and answered."""
        clock = time.monotonic()
        if clock > self._epoch_ends:
            self._previous, self._current = self._current, None
            self._epoch_ends = clock + EPOCH_S
        upper = redis_now_ms - sent_s * 1000
        lower = redis_now_ms - received_s * 1000
        known = self.offset_ms()
        if known is not None and lower > known:  # Redis's clock stepped ahead: start again
            self._current, self._previous = upper, None
        elif self._current is None or upper < self._current:
            self._current = upper

    def offset_ms(self) -> float | None:
        """An upper bound of (Redis's clock − ours) in ms; None before any answer."""
        known = [b for b in (self._current, self._previous) if b is not None]
        return min(known) if known else None

    def to_redis_ms(self, wall_s: float) -> int:
        """``wall_s`` (``time.time()`` terms) in Redis ``TIME`` ms; 0 (no deadline) when
        nothing is known of Redis's clock yet."""
        offset = self.offset_ms()
        return 0 if offset is None else int(wall_s * 1000 + offset)
