"""A request's limits as the script sees them: which subjects' states it reads (the key's,
its owner's, its organisation's — all under the organisation's hash tag, so one cluster
slot), the arguments it is given, and its answer turned into a Decision."""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.keyrecord import KeyRecord
from gateway.limits import periods
from gateway.limits.decision import QUOTA, RATE, Decision, Window, WindowState, windows_of
from gateway.limits.script import AT, DEADLINE, ENFORCE, FIXED_NUMBERS, PERIOD_KINDS

Args = list[str | bytes]  # the script's ARGV: mode, the two seeds, the packed numbers


def packed(numbers: list[int]) -> bytes:
    """The plan's numbers as the script reads them: little-endian doubles."""
    return struct.pack(f"<{len(numbers)}d", *numbers)


def leading_numbers(cost: int, enforce: bool, deadline_ms: int = 0, usage_limit: int = -1,
                    quota_limit: int = -1, quota_period: int = 0, quota_end_s: int = 0
                    ) -> list[int]:
    """The numbers every spend starts with, in the script's order (-1: no such limit; the
    7th, at_ms, is set only to give a spend back)."""
    return [cost, 1 if enforce else 0, deadline_ms, usage_limit, quota_limit, quota_period, 0,
            quota_end_s]


def subject_numbers(windows: list[Window]) -> list[int]:
    """One subject's windows as the script reads them: how many, then (limit, ms) each."""
    return [len(windows), *(a for w in windows for a in (w.limit, w.window_s * 1000))]


def state_key(tag: str, subject: str) -> str:
    """A subject's packed limit state; ``tag`` (the organisation) is the cluster hash tag."""
    return f"ks:{{{tag}}}:l:{subject}"


def key_state(record: KeyRecord) -> str:
    return state_key(record.org_id, f"k:{record.id}")


@dataclass(frozen=True, slots=True)
class Shape:
    """What one key record's limits look like to Redis, worked out once per record."""

    record: KeyRecord
    windows: list[Window]  # in the script's order: the key's, the owner's, the org's
    keys: list[str]  # the subjects' states; the key's own first (it holds the counts)
    window_args: list[int]  # per subject: its number of windows, then (limit, ms) each
    names: list[str]  # a name for each window (fast mode's bookkeeping)

    @classmethod
    def of(cls, record: KeyRecord) -> Shape:
        windows = windows_of(record)
        subjects = {"key": key_state(record)}
        if record.owner_id is not None:
            subjects["owner"] = state_key(record.org_id, f"o:{record.owner_id}")
        subjects["org"] = state_key(record.org_id, "g")
        keys: list[str] = []
        args: list[int] = []
        for scope, key in subjects.items():
            mine = [w for w in windows if w.scope == scope]
            if mine or scope == "key":
                keys.append(key)
                args += subject_numbers(mine)
        names = [f"{subjects[w.scope]}:{w.window_s}" for w in windows]
        return cls(record, windows, keys, args, names)

    @property
    def usage_name(self) -> str:
        return self.keys[0] + ":u"

    def quota_name(self, start: datetime) -> str:
        return f"{self.keys[0]}:q:{int(start.timestamp())}"


@dataclass(slots=True)
class Plan:
    """One spend, ready for the script: what it is for, and the script's keys and args."""

    record: KeyRecord
    cost: int
    now: datetime
    windows: list[Window]
    keys: list[str]
    mode: str
    numbers: list[int]
    quota_end: datetime | None
    seeds: tuple[str, str] = ("", "")

    @property
    def args(self) -> Args:
        return [self.mode, *self.seeds, packed(self.numbers)]

    def seed(self, used: int, period_used: int) -> None:
        self.seeds = (str(used), str(period_used))

    def refund_args(self, clock_ms: int) -> Args:
        """Giving back this spend, made when Redis's clock read ``clock_ms``."""
        numbers = list(self.numbers)
        numbers[AT], numbers[DEADLINE] = clock_ms, 0  # a refund is never too late
        return ["r", "", "", packed(numbers)]


def plan(shape: Shape, cost: int, enforce: bool, now: datetime, deadline_ms: int = 0,
         mode: str = "s") -> Plan:
    record = shape.record
    quota_period = quota_end_s = 0
    quota_end = None
    if record.quota:
        period = str(record.quota["period"])
        quota_start, quota_end = periods.bounds(period, now)
        # The period's identity: its start and its kind (a day and a week may start together).
        quota_period = int(quota_start.timestamp()) * 4 + PERIOD_KINDS[period]
        quota_end_s = int(quota_end.timestamp())
    numbers = leading_numbers(
        cost, enforce, deadline_ms,
        record.usage_limit if record.usage_limit is not None else -1,
        int(record.quota["limit"]) if record.quota else -1,
        quota_period, quota_end_s) + shape.window_args
    assert len(numbers) == FIXED_NUMBERS + len(shape.window_args)
    return Plan(record, cost, now, shape.windows, shape.keys, mode, numbers, quota_end)


def window_states(windows: list[Window], result: list[Any]) -> list[WindowState]:
    """Each window's room and reset (the script's answer: from the 7th item on, a pair
    each)."""
    states = []
    at = 6
    for window in windows:
        remaining, reset_ms = int(result[at]), int(result[at + 1])
        states.append(WindowState(window, remaining if remaining > 0 else 0,
                                  reset_ms / 1000 if reset_ms > 0 else 0.0))
        at += 2
    return states


def decide(plan: Plan, result: list[Any]) -> Decision:
    """The script's answer to a spend as a Decision."""
    record, cost, now, quota_end = plan.record, plan.cost, plan.now, plan.quota_end
    verdict, retry_ms, used, qused, spent, blocking = (int(x) for x in result[:6])
    states = window_states(plan.windows, result)
    clock_ms = int(result[-1])
    refund = functools.partial(_refund, plan, clock_ms) if spent else None
    over = _over(plan, result, used, qused) if spent and not plan.numbers[ENFORCE] else 0
    return Decision(
        verdict=verdict,
        retry_after_s=max(-(-retry_ms // 1000), 1) if verdict in (RATE, QUOTA) else None,
        windows=states,
        usage_limit=record.usage_limit,
        usage_used=used if record.usage_limit is not None else None,
        quota_limit=int(record.quota["limit"]) if record.quota else None,
        quota_used=qused if record.quota else None,
        quota_period=str(record.quota["period"]) if record.quota else None,
        quota_reset_s=(quota_end - now).total_seconds() if quota_end else None,
        spent=bool(spent) and cost > 0,
        at=now,
        blocking=states[blocking - 1] if blocking else None,
        refund=refund,
        clock_ms=clock_ms,
        over=over)


def _over(plan: Plan, result: list[Any], used: int, qused: int) -> int:
    """How many of an unenforced spend's units landed beyond a limit: of each limit, what its
    count now exceeds it by (at most the spend's cost); of the request, the most of those."""
    record = plan.record
    # A window's answer after the spend is limit - (units it held + cost): below 0 is over.
    excess = [-int(result[6 + 2 * i]) for i in range(len(plan.windows))]
    if record.usage_limit is not None:
        excess.append(used - record.usage_limit)
    if record.quota:
        excess.append(qused - int(record.quota["limit"]))
    return max(0, min(plan.cost, max(excess, default=0)))


def _refund(plan: Plan, clock_ms: int) -> tuple[list[str], Args]:
    return plan.keys, plan.refund_args(clock_ms)


def deadline_ms(clock_to_redis_ms: Callable[[float], int], deadline: float | None,
                margin_s: float) -> int:
    """A request's deadline in Redis's clock, less the time its answer needs to travel back
    (at most a tenth of what is left, so a short deadline still leaves room)."""
    if deadline is None:
        return 0
    margin = min(margin_s, max(deadline - time.time(), 0.0) / 10)
    return int(clock_to_redis_ms(deadline - margin))
