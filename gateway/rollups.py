"""Requests over time, written behind: what each key's requests came to (the status the
client got, and the gateway's refusal code) per minute and per hour, per key and summed per
organisation, for the console's charts and its "limited now" view. A process counts in
memory (a dict increment per request) and adds its counts to PostgreSQL after each usage
flush; rows older than the retention are dropped by the admin API's housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.database import Queryable
from gateway.keyrecord import KeyRecord
from gateway.metrics import HISTORY_DROPPED

log = logging.getLogger(__name__)

MINUTE_S, HOUR_S = 60, 3600
KEPT_S = {MINUTE_S: 2 * 86400, HOUR_S: 40 * 86400}  # the day view reads minutes
KEY_TABLES = {MINUTE_S: "usage_minutes", HOUR_S: "usage_hours"}
ORG_TABLES = {MINUTE_S: "usage_org_minutes", HOUR_S: "usage_org_hours"}
# Distinct (key, minute, status, code) a process holds at most while PostgreSQL cannot take
# them (about 20 MB); beyond it, new ones are dropped and counted.
MAX_PENDING = 100_000

# (key id, minute since the epoch, status, refusal code or '')
Slot = tuple[str, int, int, str]

_ADD_KEYS = """INSERT INTO {table} AS u (bucket, key_id, org_id, owner_id, status, code, count)
SELECT to_timestamp(b * {width}), k, o, w, s, c, n
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[],
            $7::bigint[]) AS t(b, k, o, w, s, c, n)
ON CONFLICT (key_id, bucket, status, code) DO UPDATE SET count = u.count + excluded.count"""
_ADD_ORGS = """INSERT INTO {table} AS u (bucket, org_id, status, code, count)
SELECT to_timestamp(b * {width}), o, s, c, n
FROM unnest($1::bigint[], $2::text[], $3::smallint[], $4::text[], $5::bigint[])
    AS t(b, o, s, c, n)
ON CONFLICT (org_id, bucket, status, code) DO UPDATE SET count = u.count + excluded.count"""
_CLEAN = "DELETE FROM {table} WHERE bucket < now() - make_interval(secs => $1)"
# Drops an organisation's rows ($1: its id), when the organisation is deleted.
FORGET_ORG = [f"DELETE FROM {table} WHERE org_id = $1"
              for table in (*KEY_TABLES.values(), *ORG_TABLES.values())]


@dataclass
class History:
    """One process's counts not yet in PostgreSQL."""

    counts: dict[Slot, int] = field(default_factory=dict)
    # Each key's organisation and owner, as last seen: a batch spanning an owner change is
    # written under the new owner.
    owners: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def count(self, key: KeyRecord, minute: int, status: int, code: str) -> None:
        slot = (key.id, minute, status, code)
        if slot in self.counts:
            self.counts[slot] += 1
        elif len(self.counts) < MAX_PENDING:
            self.counts[slot] = 1
        else:
            HISTORY_DROPPED.inc()
            return
        self.owners[key.id] = (key.org_id, key.owner_id)

    def merge(self, other: History, *, other_is_newer: bool) -> None:
        """Takes in ``other``'s counts (a write that failed), the newer owners winning."""
        for slot, n in other.counts.items():
            if slot in self.counts or len(self.counts) < MAX_PENDING:
                self.counts[slot] = self.counts.get(slot, 0) + n
            else:
                HISTORY_DROPPED.inc(n)
        self.owners = ({**self.owners, **other.owners} if other_is_newer
                       else {**other.owners, **self.owners})

    def _rows(self, width: int, by_org: bool) -> dict[tuple[str, int, int, str], int]:
        """The counts summed into buckets of ``width``, per key or per organisation."""
        rows: dict[tuple[str, int, int, str], int] = defaultdict(int)
        for (key_id, minute, status, code), n in self.counts.items():
            who = self.owners[key_id][0] if by_org else key_id
            rows[who, minute * MINUTE_S // width, status, code] += n
        return rows

    def _keys(self, width: int) -> list[list[Any]]:
        return _columns((bucket, key_id, *self.owners[key_id], status, code, n)
                        for (key_id, bucket, status, code), n
                        in sorted(self._rows(width, by_org=False).items()))

    def _orgs(self, width: int) -> list[list[Any]]:
        return _columns((bucket, org_id, status, code, n)
                        for (org_id, bucket, status, code), n
                        in sorted(self._rows(width, by_org=True).items()))

    async def add(self, conn: Queryable) -> None:
        """Adds the counts to every table, in the caller's transaction."""
        if not self.counts:
            return
        for width in (MINUTE_S, HOUR_S):
            await conn.execute(_ADD_KEYS.format(table=KEY_TABLES[width], width=width),
                               *self._keys(width))
            await conn.execute(_ADD_ORGS.format(table=ORG_TABLES[width], width=width),
                               *self._orgs(width))


def _columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows (already sorted by the primary key, so two processes adding to the same rows lock
    them in one order) as one array per column, for ``unnest``."""
    return [list(column) for column in zip(*rows, strict=True)]


async def clean(conn: Queryable) -> None:
    for width, kept_s in KEPT_S.items():
        for table in (KEY_TABLES[width], ORG_TABLES[width]):
            await conn.execute(_CLEAN.format(table=table), float(kept_s))


async def keep_clean(pool: asyncpg.Pool, stop: asyncio.Event, interval_s: float = 600) -> None:
    """Drops rows past their retention every ``interval_s`` until ``stop`` is set (the admin
    API runs it; every instance may, the deletes do not conflict)."""
    while not stop.is_set():
        try:
            await clean(pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("dropping old request history failed: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
