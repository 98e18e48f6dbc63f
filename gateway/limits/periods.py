"""Quota periods: a quota resets at the start of the UTC day, ISO week or calendar month."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def period_start(period: str, now: datetime) -> datetime:
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown quota period {period!r}")


_CURRENT: dict[str, tuple[datetime, datetime]] = {}


def bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """Start and end of the period holding ``now`` (the current one is remembered)."""
    known = _CURRENT.get(period)
    if known is not None and known[0] <= now < known[1]:
        return known
    found = period_start(period, now), period_end(period, now)
    _CURRENT[period] = found
    return found


def period_end(period: str, now: datetime) -> datetime:
    start = period_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(weeks=1)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
