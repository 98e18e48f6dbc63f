from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.limits.periods import period_end, period_start

NOW = datetime(2026, 12, 31, 17, 5, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize(("period", "start", "end"), [
    ("day", datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ("week", datetime(2026, 12, 28, tzinfo=UTC), datetime(2027, 1, 4, tzinfo=UTC)),
    ("month", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
])
def test_periods_start_and_end_on_utc_boundaries(period: str, start: datetime,
                                                 end: datetime) -> None:
    assert period_start(period, NOW) == start
    assert period_end(period, NOW) == end


def test_february_month_end() -> None:
    assert period_end("month", datetime(2028, 2, 29, 23, tzinfo=UTC)) == datetime(
        2028, 3, 1, tzinfo=UTC)
