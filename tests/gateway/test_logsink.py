"""A worker's log handler (gateway/logsink.py): lines written within one turn of the event
loop reach standard error together at the end of it, never later; outside a loop at once;
and each line reads exactly as the standard formatter writes it."""

from __future__ import annotations

import asyncio
import io
import logging

from gateway.logsink import FORMAT, TurnFlushingHandler, _Formatter


class _Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []  # what had been written at each flush

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("keystile.access", logging.INFO, __file__, 1, message, None, None)


async def test_lines_of_one_turn_are_flushed_together_at_its_end() -> None:
    stream = _Stream()
    handler = TurnFlushingHandler(stream)
    for n in range(3):
        handler.emit(_record(f"line {n}"))
    assert stream.flushed == []
    await asyncio.sleep(0)  # the turn ends
    assert stream.flushed == ["line 0\nline 1\nline 2\n"]
    handler.emit(_record("line 3"))
    await asyncio.sleep(0)
    assert len(stream.flushed) == 2 and stream.flushed[-1].endswith("line 3\n")


def test_outside_a_running_loop_every_line_is_flushed_at_once() -> None:
    stream = _Stream()
    TurnFlushingHandler(stream).emit(_record("at exit"))
    assert stream.flushed == ["at exit\n"]


def test_lines_read_as_the_standard_formatter_writes_them() -> None:
    ours, standard = _Formatter(FORMAT), logging.Formatter(FORMAT)
    for message in ("first", "same second", "x"):
        record = _record(message)
        assert ours.format(record) == standard.format(record)


class _Broken(io.StringIO):
    def flush(self) -> None:
        raise BrokenPipeError("the log collector went away")


async def test_a_broken_standard_error_does_not_reach_the_event_loop() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        TurnFlushingHandler(_Broken()).emit(_record("lost"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert errors == []
    finally:
        loop.set_exception_handler(None)
