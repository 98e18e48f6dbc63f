"""The fallback when Redis is unreachable: each worker enforces the rate-limit windows on its
own, in memory. With N workers a client can get up to N times a window's limit — the price
of staying up, counted in ``keystile_fail_open_total``."""

from __future__ import annotations

import time
from collections import deque

from gateway.keyrecord import KeyRecord
from gateway.limits.decision import windows_of

MAX_TRACKED = 100_000  # windows remembered at once; the oldest are forgotten first


class LocalLimiter:
    def __init__(self) -> None:
        self.logs: dict[tuple[str, str, int], deque[tuple[float, int]]] = {}

    def admit(self, record: KeyRecord, cost: int) -> tuple[bool, int]:
        """(allowed, seconds until a refused request could pass); spends only if allowed."""
        now = time.monotonic()
        need = max(cost, 1)
        checked = []
        retry = 0.0
        for window in windows_of(record):
            subject = {"key": record.id, "owner": f"{record.org_id}/{record.owner_id}",
                       "org": record.org_id}[window.scope]
            log = self.logs.setdefault((window.scope, subject, window.window_s), deque())
            while log and log[0][0] <= now - window.window_s:
                log.popleft()
            inside = sum(units for _, units in log)
            if inside + need > window.limit:
                retry = max(retry, log[0][0] + window.window_s - now if log else window.window_s)
            checked.append(log)
        if retry:
            return False, max(int(retry + 0.999), 1)
        if cost:
            for log in checked:
                log.append((now, cost))
        if len(self.logs) > MAX_TRACKED:
            for stale in list(self.logs)[: len(self.logs) - MAX_TRACKED]:
                del self.logs[stale]
        return True, 0
