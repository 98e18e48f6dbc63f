"""asyncpg's pool logs each failed reconnect while PostgreSQL is down with a traceback: the
gateway and admin API keep the line and give the error in one line instead."""

from __future__ import annotations

import logging

import pytest

from gateway import logfilter


def test_a_failed_reconnect_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    logfilter.install()
    logfilter.install()  # idempotent: one filter
    logger = logging.getLogger("asyncpg.pool")
    assert sum(isinstance(f, logfilter.OneLineReconnects) for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="asyncpg.pool"):
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.5', 5432)")
        except ConnectionRefusedError:
            logger.warning("Failed to restore the pool connection floor; retrying",
                           exc_info=True)
    record = caplog.records[-1]
    assert record.exc_info is None and record.exc_text is None
    assert record.getMessage() == (
        "Failed to restore the pool connection floor; retrying (ConnectionRefusedError: "
        "[Errno 111] Connect call failed ('127.0.0.5', 5432))")
    assert "Traceback" not in caplog.text
