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
from datetime import UTC, date, datetime

from redis.exceptions import RedisError

from gateway.keyrecord import KeyRecord
from gateway.limits import periods
from gateway.limits.decision import Decision
from gateway.limits.exact import Limiter
from gateway.limits.lessons import Lessons, Subject
from gateway.limits.seeds import Pending
from gateway.metrics import FAST_OVER_ADMITTED, STORE_ERRORS

log = logging.getLogger(__name__)

SYNC_CHUNK = 200  # keys per pipeline: a big sync must not hold the event loop for long


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
        self._lessons = Lessons()  # what Redis's answers taught this worker

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
        lessons = self._lessons
        if enforce:
            refusal = lessons.refusal(subjects, need)
            if refusal is not None:
                return refusal
        for subject, allowance in subjects:
            if lessons.tight(subject) or self._batch.get(subject, 0) + need > allowance:
                return None
        for subject, _ in subjects:
            self._batch[subject] = self._batch.get(subject, 0) + cost
        queued = self._queued.get(record.id)
        if queued is None:
            self._queued[record.id] = _Queued(record, cost, enforce)
        else:
            queued.units += cost
            queued.record, queued.enforce = record, queued.enforce and enforce
        return lessons.admitted(record)

    def learn(self, record: KeyRecord, decision: Decision, now: datetime,
              synced: bool = False) -> None:
        """What Redis said of ``record``: see ``Lessons.learn``."""
        self._lessons.learn(record, decision, self.subjects(record, now), synced)

    def give_back(self, record: KeyRecord, cost: int, now: datetime) -> None:
        """A locally admitted request is refunded: if it is still queued, it is not sent."""
        queued = self._queued.get(record.id)
        if queued is None:
            return
        queued.units = max(queued.units - cost, 0)
        for subject, _ in self.subjects(record, now):
            self._batch[subject] = max(self._batch.get(subject, 0) - cost, 0)

    def forget(self, kind: str = "all", ident: str = "") -> None:
        """An admin change was announced: see ``Lessons.forget``."""
        self._lessons.forget(kind, ident)

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
                        if answer.over and q.enforce:  # a shadow route's units may pass
                            FAST_OVER_ADMITTED.inc(answer.over)
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
