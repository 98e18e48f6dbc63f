"""One multiplexed connection for the hot path's scripts: many pipelines in flight on it at
once, their answers matched to them in the order Redis sends them back.

redis-py takes a connection from its pool for each pipeline, wraps it in retries and hands it
back: about 300 µs of a worker's CPU per pipeline on the development machine, more than the
rest of the limits stage. Here a pipeline is one write of bytes packed once, and its answers
are parsed by hiredis as they arrive. The connection itself is made by redis-py's connection
class (TLS, AUTH, SELECT: whatever the URL says) and then read only here.

At most once, as the rest of the client (``gateway/redisclient.py``): a pipeline that could
not be written because no connection could be made fails with ``NotSent`` after one more
try; once its bytes were written, a lost connection or an answer later than the store
timeout fails it with ``ConnectionError`` / ``TimeoutError`` and it is never sent again (it
may have run). Either way the connection is dropped and the next pipeline makes a new one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError, TimeoutError

from gateway.metrics import REDIS_ROUND_TRIPS
from gateway.redisclient import RETRIES, NotSent

Command = tuple[str | bytes | int, ...]
READ_SIZE = 65536


def _encoded(part: str | bytes | int) -> bytes:
    if isinstance(part, bytes):
        return part
    return str(part).encode()


def pack(commands: list[Command]) -> bytes:
    """``commands`` in Redis's wire format (RESP arrays of bulk strings), in one buffer."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for part in command:
            data = _encoded(part)
            out.append(b"$%d\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
    return b"".join(out)


def _answer(reply: Any) -> Any:
    """A reply as redis-py gives it: an error as its exception class (``NoScriptError``...)."""
    if isinstance(reply, hiredis.ReplyError):
        return BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return reply


@dataclass(slots=True)
class _Sent:
    """A pipeline written and waiting for its ``count`` answers."""

    count: int
    future: asyncio.Future[list[Any]]
    at: float  # time.monotonic() when written
    replies: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Link:
    """One connection made by redis-py, and what is in flight on it."""

    connection: AbstractConnection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: deque[_Sent] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    closed: bool = False


class RedisPipe:
    def __init__(self, pool: ConnectionPool, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, commands: list[Command]) -> list[Any]:
        """Each command's answer, in order; a command Redis refused gives its error
        (``ResponseError`` or a subclass, e.g. ``NoScriptError``) in its place."""
        data = pack(commands)  # first: a queued answer must have its bytes written
        link = await self._ready()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        link.sent.append(_Sent(len(commands), future, time.monotonic()))
        link.writer.write(data)
        REDIS_ROUND_TRIPS.inc()
        if self._watchdog is None:
            self._arm(self._timeout_s)
        return await future

    async def _ready(self) -> _Link:
        link = self._link
        if link is not None and not link.closed and not link.writer.transport.is_closing():
            return link
        for attempt in range(RETRIES + 1):
            try:
                return await self._connected()
            except (ConnectionError, TimeoutError, OSError) as exc:
                if attempt == RETRIES:
                    raise NotSent(f"not sent: {exc}") from exc
        raise AssertionError("unreachable")

    async def _connected(self) -> _Link:
        """The live link, made once for every caller waiting for it."""
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(self._connect_ended)
        return await asyncio.shield(connecting)

    def _connect_ended(self, connecting: asyncio.Future[_Link]) -> None:
        """Forgotten once done, whether or not anyone still waits for it (every caller may
        have been cancelled): the next pipeline after this link dies makes a new one."""
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved: a failed connect is each caller's to report

    async def _connect(self) -> _Link:
        if self._link is not None:
            self._drop(self._link, ConnectionError("the connection to Redis was closed"))
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        await connection.connect()  # type: ignore[no-untyped-call]
        reader, writer = connection._reader, connection._writer  # made by redis-py
        if reader is None or writer is None:
            raise ConnectionError("redis-py made no stream for the connection")
        link = self._link = _Link(connection, reader, writer)
        link.task = asyncio.ensure_future(self._read(link))
        return link

    async def _read(self, link: _Link) -> None:
        parser = hiredis.Reader()
        try:
            while True:
                data = await link.reader.read(READ_SIZE)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                parser.feed(data)
                while link.sent:
                    reply = parser.gets()
                    if reply is False:
                        break
                    waiting = link.sent[0]
                    waiting.replies.append(_answer(reply))
                    if len(waiting.replies) == waiting.count:
                        link.sent.popleft()
                        if not waiting.future.done():
                            waiting.future.set_result(waiting.replies)
        except (ConnectionError, OSError, hiredis.ProtocolError) as exc:
            error = exc if isinstance(exc, ConnectionError) else ConnectionError(
                f"the connection to Redis failed: {exc}")
            self._drop(link, error)

    def _drop(self, link: _Link, error: Exception) -> None:
        """Closes ``link``; what was in flight on it fails with ``error``."""
        if link.closed:
            return
        link.closed = True
        link.writer.close()
        # redis-py's connection must not think it still holds the streams (it would warn of,
        # and close again, a connection already closed here).
        link.connection._reader = link.connection._writer = None
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()
        while link.sent:
            waiting = link.sent.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(error)
        if self._link is link:
            self._link = None

    def _arm(self, delay: float) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        """One timer, not one per pipeline: the oldest pipeline in flight must have its
        answers within the store timeout, or the connection is given up."""
        self._watchdog = None
        link = self._link
        if link is None or not link.sent:
            return
        late = time.monotonic() - link.sent[0].at
        if late >= self._timeout_s:
            self._drop(link, TimeoutError(f"Redis did not answer within {self._timeout_s} s"))
            return
        self._arm(self._timeout_s - late)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        link = self._link
        if link is not None:
            self._drop(link, ConnectionError("the gateway is shutting down"))
            with contextlib.suppress(asyncio.CancelledError, OSError):
                if link.task is not None:
                    await link.task
                await link.writer.wait_closed()

