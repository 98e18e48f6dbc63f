"""``limits_mode = "fast"``: a worker admits most requests on its own and sends what it
admitted to Redis in ONE pipelined round trip every ``fast_sync_interval_s``.

Every limit a key meets — each rate window (the key's, its owner's, its organisation's), the
quota of the current period and the lifetime usage — is a *subject*. Per sync interval a worker
may admit, without asking Redis, up to the subject's allowance: ``floor(limit ×
fast_unsynced_share)`` units (so a limit below ``1 / fast_unsynced_share`` is always checked
exactly). A request that would pass an allowance, or meets a subject that is close to its
limit, takes the exact path (one atomic round trip, as in ``exact`` mode). What Redis answers
teaches the worker: a sync marks the subjects close to their limit (their requests go exact),
and a refusal on the exact path refuses locally, with the right ``Retry-After``, the requests
that need more than was left, until the window has room again.

The bound (written down in the README and checked by tests/gateway/test_fastlimits.py): Redis
lacks at most two allowances per worker and subject (the interval being collected and the one
in flight), so over any window, period or lifetime a limit admits at most

    limit + 2 × workers × floor(limit × fast_unsynced_share)

units (with the default share 0.01 and 2 workers: 4% over, and nothing over for limits < 100).
Rate-limit headers on locally admitted requests show the key's state at its last sync."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from datetime import UTC, date, datetime

from redis.exceptions import RedisError

from gateway.keyrecord import KeyRecord
from gateway.limits import periods
from gateway.limits.decision import ALLOWED, QUOTA, USAGE, Decision
from gateway.limits.exact import Limiter
from gateway.limits.seeds import Pending
from gateway.metrics import STORE_ERRORS

log = logging.getLogger(__name__)

REMEMBERED = 100_000  # keys whose last decision a worker keeps (for headers); LRU beyond
SYNC_CHUNK = 200  # keys per pipeline: a big sync must not hold the event loop for long
USAGE_RECHECK_S = 1.0  # a spent lifetime allowance is asked about again this often

Subject = tuple[str, int]  # (name of the limit, units this worker may admit unsynced)

# A request admitted here before Redis has told this worker anything about its key.
_ADMITTED = Decision(verdict=ALLOWED, retry_after_s=None, windows=[], usage_limit=None,
                     usage_used=None, quota_limit=None, quota_used=None, quota_period=None,
                     quota_reset_s=None, spent=True, local=True)


@dataclasses.dataclass(slots=True)
class _Queued:
    record: KeyRecord
    units: int
    enforce: bool


class FastLimiter:
    def __init__(self, limiter: Limiter, interval_s: float, share: float,
                 recorded: Pending) -> None:
        self.limiter = limiter
        self.interval_s = interval_s
        self.share = share
        self.recorded = recorded  # usage this worker has not yet written to PostgreSQL
        self.healthy = True  # the last sync reached Redis
        self._batch: dict[str, int] = {}  # subject -> units admitted locally this interval
        self._queued: dict[str, _Queued] = {}  # key id -> what to send at the next sync
        self._sending: dict[str, int] = {}  # key id -> units of the sync in flight
        # subject -> (until, units that were left, the refusal)
        self._blocked: dict[str, tuple[float, int, Decision]] = {}
        self._tight: set[str] = set()  # subjects too close to their limit to admit locally
        self._last: OrderedDict[str, Decision] = OrderedDict()  # key id -> last from Redis

    def pending(self, key_id: str, since: date) -> tuple[int, int]:
        """What a re-seed of lost counters must add to PostgreSQL's figures: the usage not yet
        written there, less the units not yet in Redis (a sync will add those)."""
        lifetime, period = self.recorded(key_id, since)
        queued = self._queued.get(key_id)
        unsynced = self._sending.get(key_id, 0) + (queued.units if queued else 0)
        return lifetime - unsynced, period - unsynced

    def subjects(self, record: KeyRecord, now: datetime) -> list[Subject]:
        """Every limit the record meets, with what this worker may admit of it unsynced:
        its windows, then its quota (this period's), then its lifetime usage."""
        shape = self.limiter.shape(record)
        share = self.share
        found = [(name, int(w.limit * share)) for name, w in zip(shape.names, shape.windows,
                                                                  strict=True)]
        if record.quota:
            start = periods.bounds(str(record.quota["period"]), now)[0]
            found.append((shape.quota_name(start), int(int(record.quota["limit"]) * share)))
        if record.usage_limit is not None:
            found.append((shape.usage_name, int(record.usage_limit * share)))
        return found

    def admit(self, record: KeyRecord, cost: int, enforce: bool, now: datetime
              ) -> Decision | None:
        """A decision made here, or None: ask Redis (the exact path), then ``learn``."""
        if not self.healthy:
            return None  # Redis failed at the last sync: the failure policies decide
        subjects = self.subjects(record, now)
        need = max(cost, 1)  # a cost-0 request is still refused by an exhausted limit
        if enforce and self._blocked:
            refusal = self._refusal(subjects, need)
            if refusal is not None:
                return refusal
        for subject, allowance in subjects:
            if subject in self._tight or self._batch.get(subject, 0) + need > allowance:
                return None
        for subject, _ in subjects:
            self._batch[subject] = self._batch.get(subject, 0) + cost
        queued = self._queued.get(record.id)
        if queued is None:
            self._queued[record.id] = _Queued(record, cost, enforce)
        else:
            queued.units += cost
            queued.record, queued.enforce = record, queued.enforce and enforce
        return self._admitted(record)

    def _refusal(self, subjects: list[Subject], need: int) -> Decision | None:
        """Redis refused a request on one of these limits, and this one needs more than was
        left then: refused here. One that needs less asks Redis."""
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

    def _admitted(self, record: KeyRecord) -> Decision:
        """The key as Redis last saw it (for the headers), admitted here."""
        return self._last.get(record.id) or _ADMITTED

    def learn(self, record: KeyRecord, decision: Decision, now: datetime,
              synced: bool = False) -> None:
        """What Redis said of ``record``. Only a refusal on the exact path (judged with the
        current record and the request's own cost) refuses later requests here; a sync only
        marks limits that are close as ones to ask Redis about."""
        clock = time.monotonic()
        subjects = self.subjects(record, now)
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
            blocking = self._blocking(record, decision, subjects)
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
    def _blocking(record: KeyRecord, decision: Decision, subjects: list[Subject]
                  ) -> str | None:
        windows = len(decision.windows)
        if decision.verdict == QUOTA:
            return subjects[windows][0]
        if decision.verdict == USAGE:
            return subjects[-1][0]
        if decision.blocking is not None:
            return subjects[decision.windows.index(decision.blocking)][0]
        return None

    def give_back(self, record: KeyRecord, cost: int, now: datetime) -> None:
        """A locally admitted request is refunded: if it is still queued, it is not sent."""
        queued = self._queued.get(record.id)
        if queued is None:
            return
        queued.units = max(queued.units - cost, 0)
        for subject, _ in self.subjects(record, now):
            self._batch[subject] = max(self._batch.get(subject, 0) - cost, 0)

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

    async def sync(self) -> None:
        """Sends what was admitted since the last sync: one round trip per ``SYNC_CHUNK``
        keys, learning from each answer before the next (the event loop serves between)."""
        queued, self._queued, self._batch = self._queued, {}, {}
        items = [q for q in queued.values() if q.units]
        self._sending = {q.record.id: q.units for q in items}
        failed: list[_Queued] = []
        error: Exception | None = None
        try:
            for start in range(0, len(items), SYNC_CHUNK):
                chunk, now = items[start:start + SYNC_CHUNK], datetime.now(UTC)
                try:
                    answers = await self.limiter.spend_many(
                        [(q.record, q.units, False) for q in chunk], now, self.pending)
                except (RedisError, OSError) as exc:  # nothing known of this chunk or later
                    failed += items[start:]
                    error = exc
                    break
                for q, answer in zip(chunk, answers, strict=True):
                    del self._sending[q.record.id]
                    if isinstance(answer, Exception):
                        failed.append(q)  # its script did not spend: send it again
                        error = answer
                    else:
                        self.learn(q.record, answer, now, synced=True)
        finally:
            self._sending = {}
        self.healthy = error is None
        if error is not None:
            STORE_ERRORS.labels(store="redis").inc()
            log.warning("fast limits could not sync %d keys: %s", len(failed),
                        type(error).__name__)
            for q in failed:  # sent at the next sync; until then requests go the exact way
                again = self._queued.setdefault(q.record.id, _Queued(q.record, 0, q.enforce))
                again.units += q.units

    async def run(self, stop: asyncio.Event) -> None:
        """Syncs every ``interval_s`` until ``stop`` is set, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            try:
                await self.sync()
            except Exception:  # never let syncing stop: log, keep the units, go on
                log.exception("fast limits sync failed")
        await self.sync()
        if self._queued:
            log.error("fast limits: %d keys' units could not reach Redis before stopping",
                      len(self._queued))
