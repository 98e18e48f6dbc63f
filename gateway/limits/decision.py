"""What the limits engine says of a request: a verdict and where each limit stands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.keyrecord import KeyRecord

ALLOWED, RATE, QUOTA, USAGE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Window:
    scope: str  # key | owner | org
    limit: int
    window_s: int


@dataclass(slots=True)  # made for every window of every request: not frozen, which is slower
class WindowState:
    window: Window
    remaining: int
    reset_s: float


@dataclass(slots=True)
class Decision:
    verdict: int  # ALLOWED, RATE, QUOTA or USAGE
    retry_after_s: int | None
    windows: list[WindowState]
    usage_limit: int | None
    usage_used: int | None
    quota_limit: int | None
    quota_used: int | None
    quota_period: str | None
    quota_reset_s: float | None
    spent: bool
    at: datetime | None = None  # when the units were spent (a refund books them back there)
    blocking: WindowState | None = None  # the window that refused, if one did
    # What giving the spend back takes: the script's keys and arguments (worked out only for
    # the few requests that give back).
    refund: Callable[[], tuple[list[str], list[str | bytes]]] | None = field(default=None,
                                                                           repr=False)
    local: bool = False  # decided by this worker alone (limits_mode fast), not by Redis
    clock_ms: int | None = None  # Redis's clock when the script judged the request
    # Units of this spend that landed beyond a limit: only a spend not enforced can (shadow
    # mode, fast mode's sync of what a worker already admitted).
    over: int = 0

    @property
    def allowed(self) -> bool:
        return self.verdict == ALLOWED


def windows_of(record: KeyRecord) -> list[Window]:
    """The record's rate-limit windows: its own, its owner's, its organisation's."""
    found = [Window("key", int(r["limit"]), int(r["window_s"])) for r in record.rate_limits]
    if record.owner_id is not None:
        found += [Window("owner", int(r["limit"]), int(r["window_s"]))
                  for r in record.owner_rate_limits]
    found += [Window("org", int(r["limit"]), int(r["window_s"])) for r in record.org_rate_limits]
    return found


def has_limits(record: KeyRecord) -> bool:
    return bool(record.usage_limit is not None or record.quota or record.rate_limits
                or record.org_rate_limits or (record.owner_id and record.owner_rate_limits))
