"""Reading the request history the gateway writes behind (``gateway.rollups``): a subject's
counts over a range, and the keys answered 429 most in the last minutes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from gateway.database import Queryable
from gateway.rollups import HOUR_S, KEY_TABLES, MINUTE_S, ORG_TABLES


@dataclass(frozen=True, slots=True)
class Range:
    width_s: int  # of the rows read: minutes or hours
    step_s: int
    points: int


RANGES = {
    "hour": Range(MINUTE_S, 60, 60),
    "day": Range(MINUTE_S, 900, 96),
    "30d": Range(HOUR_S, 86400, 30),
}


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose requests: a key; an organisation's owner; an organisation; with none set,
    every organisation's."""
    key_id: str | None = None
    org_id: str | None = None
    owner_id: str | None = None


def window(range_: Range, now: datetime) -> tuple[datetime, datetime]:
    """The points' span: whole steps (aligned to the epoch), the last one holding ``now``."""
    step = range_.step_s
    end = datetime.fromtimestamp((int(now.timestamp()) // step + 1) * step, now.tzinfo)
    return end - timedelta(seconds=step * range_.points), end


async def series(conn: Queryable, subject: Subject, range_: Range, since: datetime,
                 until: datetime) -> list[asyncpg.Record]:
    """(at, status, code, count) per step, for the steps that have any. Each kind of subject
    has a statement of its own, so each is planned for its own index."""
    args: list[str | None]
    if subject.key_id is not None:
        table, where, args = KEY_TABLES[range_.width_s], "key_id = $4", [subject.key_id]
    elif subject.owner_id is not None:
        table, where, args = (KEY_TABLES[range_.width_s], "org_id = $4 AND owner_id = $5",
                              [subject.org_id, subject.owner_id])
    elif subject.org_id is not None:  # the organisation's sums: a row per step, not per key
        table, where, args = ORG_TABLES[range_.width_s], "org_id = $4", [subject.org_id]
    else:
        table, where, args = ORG_TABLES[range_.width_s], "true", []
    return await conn.fetch(
        f"""SELECT date_bin(make_interval(secs => $1), bucket, 'epoch'::timestamptz) AS at,
               status, code, sum(count)::bigint AS count
        FROM {table}
        WHERE bucket >= $2 AND bucket < $3 AND {where}
        GROUP BY 1, 2, 3 ORDER BY 1""",
        float(range_.step_s), since, until, *args)


async def limited(conn: Queryable, org_id: str | None, minutes: int, limit: int
                  ) -> list[asyncpg.Record]:
    """The keys the gateway answered 429 most over the last ``minutes`` (the current minute
    included); an upstream's own 429s do not count."""
    return await conn.fetch(
        f"""WITH recent AS (
            SELECT key_id, min(org_id) AS org_id, min(owner_id) AS owner_id,
                   sum(count) FILTER (WHERE status = 429 AND code <> '')::bigint AS limited,
                   sum(count)::bigint AS requests
            FROM {KEY_TABLES[MINUTE_S]}
            WHERE bucket >= date_trunc('minute', now()) - make_interval(mins => $1 - 1)
              AND ($2::text IS NULL OR org_id = $2)
            GROUP BY key_id)
        SELECT r.*, k.name, k.prefix,
               CASE WHEN k.status <> 'revoked' AND k.expires_at <= now() THEN 'expired'
                    ELSE k.status END AS status
        FROM recent r
        LEFT JOIN keys k ON k.id = r.key_id
        WHERE r.limited > 0
        ORDER BY r.limited DESC, r.key_id LIMIT $3""",
        minutes, org_id, limit)
