"""An upstream's response as the proxy reads it: status, raw headers, then the body in the
pieces it arrives in. Releasing it returns the connection to its pool, or closes it."""

from __future__ import annotations

import asyncio

from gateway.upstream.connection import Connection
from gateway.upstream.pool import Pool


class UpstreamResponse:
    __slots__ = ("_conn", "_pool", "_sender", "_timeout", "raw_headers", "reason", "status")

    def __init__(self, conn: Connection, pool: Pool, sender: asyncio.Task[None] | None,
                 timeout: float) -> None:
        self._conn = conn
        self._pool = pool
        self._sender = sender
        self._timeout = timeout
        self.status = conn.status
        self.reason = conn.reason
        self.raw_headers = tuple(conn.raw_headers)

    @property
    def complete(self) -> bool:
        """The whole body arrived (with the head, when asked right away)."""
        return self._conn.done

    @property
    def buffered(self) -> int:
        """Bytes of body received and not yet read."""
        return self._conn.buffered

    async def read(self) -> bytes:
        """The body received since the last read, waiting at most the timeout for more;
        b"" at its end. Raises UpstreamTimeout or UpstreamUnavailable."""
        return await self._conn.read(self._timeout)

    def release(self) -> None:
        sender = self._sender
        if sender is not None and not sender.done():
            sender.cancel()  # the upstream answered before the body was sent: not reusable
        conn = self._conn
        if conn.finish():
            self._pool.put(conn)
        else:
            conn.close()
