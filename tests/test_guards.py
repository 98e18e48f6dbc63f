"""The suite's own guards (tests/conftest.py): the default ports are busy for the whole run,
and the UTC-midnight arithmetic that keeps quota tests inside one period."""

from __future__ import annotations

import errno
import socket
from datetime import UTC, datetime

import pytest

from tests.conftest import DEFAULT_PORTS, seconds_to_utc_midnight


@pytest.mark.parametrize("port", DEFAULT_PORTS)
def test_default_ports_are_busy_during_the_run(port: int) -> None:
    """Held by the session guard, or by whatever held them already: either way a test that
    tries one fails at once."""
    with socket.socket() as sock, pytest.raises(OSError) as refused:
        sock.bind(("127.0.0.1", port))
    assert refused.value.errno == errno.EADDRINUSE


def test_seconds_to_utc_midnight() -> None:
    assert seconds_to_utc_midnight(datetime(2026, 3, 1, 23, 59, 59, 900000, tzinfo=UTC)) == (
        pytest.approx(0.1))
    assert seconds_to_utc_midnight(datetime(2026, 3, 1, tzinfo=UTC)) == 86400
    assert seconds_to_utc_midnight(datetime(2026, 12, 31, 12, tzinfo=UTC)) == 43200
