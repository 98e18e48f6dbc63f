"""One keep-alive HTTP/1.1 connection to an upstream: writes a request, parses the response
with httptools and hands its body over as it arrives, reading the socket only while the
consumer keeps up. It may carry another request only if the last exchange ended exactly at a
message boundary: request fully written, response fully read, nothing more received, no
``Connection: close``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import httptools

from gateway.upstream.errors import UpstreamTimeout, UpstreamUnavailable

# Response body held for a consumer that lags; beyond it the socket is not read.
HIGH_WATER = 512 * 1024
# llhttp sets no bound on a response's head: an upstream sending headers without end would
# otherwise be held in memory whole.
MAX_HEAD = 128 * 1024


class _Surplus(Exception):
    """Raised in a parser callback to stop parsing bytes that follow a complete response."""


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _has_token(headers: list[tuple[bytes, bytes]], name: bytes, token: bytes) -> bool:
    return any(n.lower() == name and token in (t.strip().lower() for t in v.split(b","))
               for n, v in headers)


def _head_keeps_alive(version: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """Keep-alive for a response to HEAD, which llhttp judges as if a body might follow."""
    if version == "1.1":
        return not _has_token(headers, b"connection", b"close")
    return version == "1.0" and _has_token(headers, b"connection", b"keep-alive")


def _delimited_by_close(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the body ends when the upstream closes: no length and not chunked (llhttp
    reads such a body to the end; httptools cannot tell it the end came)."""
    if status in (204, 304):
        return False
    for name, value in headers:
        low = name.lower()
        if low == b"content-length":
            return False
        if low == b"transfer-encoding" and value.rsplit(b",", 1)[-1].strip().lower() == \
                b"chunked":
            return False
    return True


class Connection(asyncio.Protocol):
    __slots__ = ("_body", "_buffered", "_drain_waiter", "_error", "_fresh_tls", "_head_bytes",
                 "_head_request", "_interim", "_keep_alive", "_loop", "_parser",
                 "_reading_paused", "_reusable", "_send_error", "_sent", "_to_eof",
                 "_transport", "_waiter", "_write_paused", "busy", "closed", "done",
                 "headers_done", "idle_since", "raw_headers", "reason", "status")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._fresh_tls = False  # over TLS, and no exchange finished on it yet
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.closed = False  # by either side, or on its way
        self._reusable = True  # cleared for good by anything that makes the next answer unsure
        self.idle_since = 0.0
        self._waiter: asyncio.Future[bool] | None = None  # the response's consumer
        self._drain_waiter: asyncio.Future[bool] | None = None  # the request body's sender
        self._write_paused = False
        self._reading_paused = False
        # The exchange in flight (reset by finish()).
        self.busy = False
        self._head_request = False
        self._sent = False  # the whole request is written
        self._head_bytes = 0  # received before the final head was complete
        self._error: UpstreamUnavailable | None = None
        self._send_error: BaseException | None = None
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.done = False  # the response is complete
        self._interim = False
        self._keep_alive = False
        self._to_eof = False
        self._body: list[bytes] = []
        self._buffered = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self._fresh_tls = transport.get_extra_info("ssl_object") is not None

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if not self.busy or parser is None:
            # Bytes nobody asked for: whatever they are, no later answer could be trusted.
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # a 101: what follows is another protocol
            self._reusable = False
        except httptools.HttpParserError as exc:
            self._reusable = False
            if not self.done:  # else: bytes after a complete response, which only end this
                self._error = UpstreamUnavailable(  # connection
                    f"the upstream's response is not valid HTTP/1.1 ({exc})")
        if not self.headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD and self._error is None:
                self._error = UpstreamUnavailable(f"the upstream's response head is longer "
                                                  f"than {MAX_HEAD} bytes")
                self.close()
        if self._buffered > HIGH_WATER and not self._reading_paused and not self.closed:
            self._reading_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool | None:
        self._ended_by_upstream()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended_by_upstream()
        self._parser = None  # it refers back to this protocol: no cycle left for the GC
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(True)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(True)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.done:  # more than the response declared: never handed to the next request
            raise _Surplus

    def on_status(self, status: bytes) -> None:
        self.reason += status  # may arrive in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim (100, 103): skipped
            self._interim = True
            self.reason = b""
            self.raw_headers = []
            return
        self.status = status
        self.headers_done = True
        if self._head_request:
            # httptools cannot tell llhttp that a response to HEAD has no body (llhttp's
            # "skip body" return is not exposed), so the response ends with its head here
            # and finish() gives the next request a fresh parser.
            self.done = True
            self._keep_alive = _head_keeps_alive(parser.get_http_version(), self.raw_headers)
        else:
            self._keep_alive = parser.should_keep_alive()
            if not self._keep_alive:
                self._to_eof = _delimited_by_close(status, self.raw_headers)

    def on_body(self, body: bytes) -> None:
        if self.done:  # a body after the head of a response to HEAD
            self._reusable = False
            return
        self._body.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self.done = True

    # The exchange

    @property
    def buffered(self) -> int:
        return self._buffered

    def begin(self, head: bytes, head_request: bool, has_body: bool) -> None:
        """Writes the request head (the body, if any, follows with send_body)."""
        assert self._transport is not None and not self.busy
        self.busy = True
        self._head_request = head_request
        self._sent = not has_body
        if self.closed:  # a new connection the upstream closed, or sent on, unasked
            raise UpstreamUnavailable("the upstream closed the connection before the request")
        self._transport.write(head)

    async def send_body(self, body: AsyncIterator[bytes], chunked: bool,
                        timeout: float) -> None:
        """Writes the request body as it comes, beside the response (an upstream may answer
        early, or stream while it reads). Records a failure for wait_head rather than
        raising it: the exception of ``body`` itself (e.g. over the size limit) is kept."""
        transport = self._transport
        assert transport is not None
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if self.closed:
                    raise UpstreamUnavailable("the upstream closed the connection while the "
                                              "request body was being sent")
                if chunked:
                    transport.write(b"".join((b"%x\r\n" % len(chunk), chunk, b"\r\n")))
                else:
                    transport.write(chunk)
                while self._write_paused and not self.closed:
                    if not await self._wait_drain(timeout):
                        raise UpstreamTimeout("the upstream did not take the request body in "
                                              "time")
            if chunked:
                transport.write(b"0\r\n\r\n")
            self._sent = True
            self._wake()  # the wait for the head is timed from now
        except Exception as exc:
            self._reusable = False
            self._send_error = exc.with_traceback(None)  # no frames kept alive by it
            self._wake()

    async def wait_head(self, timeout: float) -> None:
        """Until the final response's head is in (interim 1xx ones skipped). The timeout
        runs once the request is written: while the body is on its way, its sender watches
        the upstream taking it and the server watches the client sending it."""
        while not self.headers_done:
            self._raise_failure(sending=True)
            if not await self._wait(timeout if self._sent else None):
                raise UpstreamTimeout("the upstream did not answer in time")

    async def read(self, timeout: float) -> bytes:
        """The response body received since the last read; b"" once it is complete."""
        while not self._body:
            if self.done:
                return b""
            self._raise_failure(sending=False)
            if not await self._wait(timeout):
                raise UpstreamTimeout("the upstream stalled in the middle of the response")
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]
        return data

    def finish(self) -> bool:
        """Ends the exchange; True when the connection may carry another request."""
        reusable = (self._reusable and self.done and self._sent and self._keep_alive
                    and not self._body and not self.closed)
        self.busy = False
        self._fresh_tls = False
        self._sent = False
        self._head_bytes = 0
        self._error = self._send_error = None
        self.status = 0
        self.reason = b""
        self.raw_headers = []
        self.headers_done = self.done = self._interim = self._keep_alive = False
        self._to_eof = False
        self._body = []
        self._buffered = 0
        if reusable and self._head_request:  # its parser still waits for a body
            self._parser = httptools.HttpResponseParser(self)
        return reusable

    def close(self) -> None:
        self.closed = True
        self._reusable = False
        if self._transport is not None:
            self._transport.close()

    # Internals

    def _ended_by_upstream(self) -> None:
        self.closed = True
        self._reusable = False
        if self.busy and not self.done:
            if self.headers_done and self._to_eof:
                self.done = True  # the close is how this body ends
            elif self._error is None and self._fresh_tls and not self.headers_done:
                # A TLS 1.3 upstream checks the client certificate after the handshake, and
                # a refusal reaches asyncio and uvloop alike as this close.
                self._error = UpstreamUnavailable(
                    "the upstream closed the new TLS connection without answering (as an "
                    "upstream requiring a client certificate does when not shown one it "
                    "trusts: see upstream_client_cert_file)")
            elif self._error is None:
                self._error = UpstreamUnavailable(
                    "the upstream closed the connection before the response was complete"
                    if self.headers_done else
                    "the upstream closed the connection without answering")
        self._wake()

    def _raise_failure(self, sending: bool) -> None:
        if sending and self._send_error is not None:
            raise self._send_error
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _wait(self, timeout: float | None) -> bool:
        """Until something happens on the connection (True) or ``timeout`` passes (False)."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiter = waiter
        timer = None if timeout is None else self._loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None

    async def _wait_drain(self, timeout: float) -> bool:
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._drain_waiter = waiter
        timer = self._loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None
