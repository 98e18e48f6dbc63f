"""What Redis has taught a ``fast``-mode worker about the limits it meets: which subjects are
too close to their limit to admit locally, which refused a request (and until when), and
each key's last answer (for the headers of requests admitted locally)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict

from gateway.keyrecord import KeyRecord
from gateway.limits.decision import ALLOWED, QUOTA, USAGE, Decision

REMEMBERED = 100_000  # keys whose last decision a worker keeps (for headers); LRU beyond
USAGE_RECHECK_S = 1.0  # a spent lifetime allowance is asked about again this often

Subject = tuple[str, int]  # (name of the limit, units this worker may admit unsynced)

# A request admitted here before Redis has told this worker anything about its key.
_ADMITTED = Decision(verdict=ALLOWED, retry_after_s=None, windows=[], usage_limit=None,
                     usage_used=None, quota_limit=None, quota_used=None, quota_period=None,
                     quota_reset_s=None, spent=True, local=True)


class Lessons:
    def __init__(self) -> None:
        # subject -> (until, units that were left, the refusal)
        self._blocked: dict[str, tuple[float, int, Decision]] = {}
        self._tight: set[str] = set()  # subjects too close to their limit to admit locally
        self._last: OrderedDict[str, Decision] = OrderedDict()  # key id -> last from Redis

    def refusal(self, subjects: list[Subject], need: int) -> Decision | None:
        """Redis refused a request on one of these limits, and this one needs more than was
        left then: refused here. One that needs less asks Redis."""
        if not self._blocked:
            return None  # the common case, kept cheap: nothing refused lately
        clock = time.monotonic()
        for subject, _ in subjects:
            blocked = self._blocked.get(subject)
            if blocked is None:
                continue
            until, room, refusal = blocked
            if clock < until and need > room:
                retry = max(math.ceil(until - clock), 1)
                return dataclasses.replace(refusal, retry_after_s=retry, spent=False,
                                           refund=None, local=True)
            if clock >= until:
                del self._blocked[subject]
            self._tight.add(subject)  # room again, maybe: the next request asks Redis
        return None

    def tight(self, subject: str) -> bool:
        """Too close to its limit for this worker to admit a request on its own."""
        return subject in self._tight

    def admitted(self, record: KeyRecord) -> Decision:
        """The key as Redis last saw it (for the headers), admitted here."""
        return self._last.get(record.id) or _ADMITTED

    def learn(self, record: KeyRecord, decision: Decision, subjects: list[Subject],
              synced: bool) -> None:
        """What Redis said of ``record``, whose limits are ``subjects``. Only a refusal on the
        exact path (judged with the current record and the request's own cost) refuses later
        requests here; a sync only marks limits that are close as ones to ask Redis about."""
        clock = time.monotonic()
        room: list[int] = [s.remaining for s in decision.windows]
        if record.quota:
            room.append((decision.quota_limit or 0) - (decision.quota_used or 0))
        if record.usage_limit is not None:
            room.append((decision.usage_limit or 0) - (decision.usage_used or 0))
        for (subject, allowance), left in zip(subjects, room, strict=True):
            if left < max(allowance, 1):
                self._tight.add(subject)
            else:
                self._tight.discard(subject)
        if not decision.allowed and not synced:
            blocking = self._blocking(decision, subjects)
            if blocking is not None:
                wait = (decision.retry_after_s if decision.verdict != USAGE
                        else USAGE_RECHECK_S)
                left = room[[s for s, _ in subjects].index(blocking)]
                self._blocked[blocking] = (clock + float(wait or 1), max(left, 0), decision)
        if decision.allowed:
            self._last[record.id] = dataclasses.replace(decision, spent=True, at=None,
                                                        refund=None, local=True)
            self._last.move_to_end(record.id)
        else:
            self._last.pop(record.id, None)
        if len(self._last) > REMEMBERED:
            self._last.popitem(last=False)

    @staticmethod
    def _blocking(decision: Decision, subjects: list[Subject]) -> str | None:
        """The subject that refused: windows come first, then the quota, then usage."""
        windows = len(decision.windows)
        if decision.verdict == QUOTA:
            return subjects[windows][0]
        if decision.verdict == USAGE:
            return subjects[-1][0]
        if decision.blocking is not None:
            return subjects[decision.windows.index(decision.blocking)][0]
        return None

    def forget(self, kind: str = "all", ident: str = "") -> None:
        """An admin change was announced: what this worker learnt of that key (or that
        organisation, or anything) may be stale."""
        if kind == "key":
            stale = [s for s in (*self._blocked, *self._tight) if f":{ident}" in s]
            self._last.pop(ident, None)
        elif kind == "org":
            stale = [s for s in (*self._blocked, *self._tight) if f"{{{ident}}}" in s]
            self._last.clear()  # headers only: they come back at the next sync
        else:
            self._blocked.clear()
            self._tight.clear()
            self._last.clear()
            return
        for subject in stale:
            self._blocked.pop(subject, None)
            self._tight.discard(subject)
