"""How long a worker keeps a client connection, and how many it keeps — nginx's limits, which
aiohttp lacks (its only timer is keep-alive, and it also runs while a request head trickles in).

Each connection has one watchdog timer for the phase it is in:

* idle — waiting for a request's first byte: ``header_timeout_s`` on a new connection (as
  nginx), ``keepalive_timeout_s`` after a response. Closed silently.
* head — a request head has begun: it must be complete ``header_timeout_s`` after its first
  byte (slowloris). Answered 408 ``request_timeout`` and closed.
* body — the head is in, the body is not: at most ``body_timeout_s`` between two reads, not
  counted while the gateway itself has stopped reading (a slow upstream). The connection is
  closed, so the upstream sees its request aborted and never a complete body.
* busy — the request is in; the route's ``timeout_s`` governs the upstream, not this module.

Over TLS, the handshake comes first: it must be over within ``header_timeout_s`` too
(``GuardedSite``), and a connection counts towards ``max_connections`` once it is.

Answered, a connection is idle again (keep-alive) — with two exceptions. A request answered
before its body was read (a 401, say) stays in body while aiohttp reads the rest out, and is
idle once it has. Bytes of a pipelined request that arrived while the previous one was busy
put it in head, timed from their arrival, not in idle.

A worker holds at most ``max_connections``. A connection beyond that closes the longest-idle
one, as nginx reuses keep-alive connections; if none is idle it is answered 503
``too_many_connections`` with ``Connection: close`` (after which it is read and dropped for a
moment, so the client sees the answer rather than a reset)."""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway import metrics
from gateway.settings import Settings

# Descriptors a worker needs besides client, upstream and store connections: the listening
# socket, standard streams, the supervisor's pipes, metric files, the event loop's own.
RESERVED_FDS = 64
REFUSAL_LINGER_S = 1.0

Phase = Literal["idle", "head", "body", "busy", "refused"]


def _answer(status: str, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


TOO_MANY = _answer("503 Service Unavailable", "too_many_connections",
                   "this gateway worker is at its connection limit; retry shortly")
REQUEST_TIMEOUT = _answer("408 Request Timeout", "request_timeout",
                          "the request headers did not arrive in time")


def default_max_connections(settings: Settings, nofile: int | None = None) -> int:
    """Client connections a worker can hold without running out of descriptors: each may
    have one upstream connection open too, beside the PostgreSQL and Redis pools."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    stores = settings.stores
    spare = nofile - stores.pool_max_size - stores.redis_max_connections - RESERVED_FDS
    return max(spare // 2, 1)


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        gw = settings.gateway
        return cls(gw.header_timeout_s, gw.body_timeout_s, gw.keepalive_timeout_s,
                   gw.max_connections or default_max_connections(settings))


class Connections:
    """A worker's client connections: which are open, and which wait idle (oldest first)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: set[GuardedHandler] = set()
        self.idle: dict[GuardedHandler, None] = {}  # insertion order: longest idle first

    def admit(self, conn: GuardedHandler) -> bool:
        if len(self.open) >= self.limits.max_connections:
            if not self.idle:
                metrics.connection_dropped("too_many_connections")
                return False
            oldest = next(iter(self.idle))
            self.forget(oldest)
            oldest.force_close()
            metrics.connection_dropped("evicted_idle")
        self.open.add(conn)
        return True

    def forget(self, conn: GuardedHandler) -> None:
        self.open.discard(conn)
        self.idle.pop(conn, None)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with the watchdog and the cap described above."""

    __slots__ = ("_answered", "_body", "_guard", "_next_head_at", "_phase", "_since", "_timer")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager.guard
        self._phase: Phase = "idle"
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._body: Any = None  # the payload of the request being received
        self._answered = False  # in body: its response has finished, aiohttp reads it out
        self._next_head_at: float | None = None  # in busy: when a next head began arriving

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            self._phase = "refused"
            assert isinstance(transport, asyncio.Transport)
            transport.write(TOO_MANY)
            if transport.can_write_eof():
                transport.write_eof()
            self._loop.call_later(REFUSAL_LINGER_S, transport.close)
            return
        super().connection_made(transport)
        self._idle(self._guard.limits.header_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._phase == "refused":
            return
        self._guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "refused":
            return  # read and dropped until the client or the linger closes it
        limits = self._guard.limits
        now = self._loop.time()
        was_idle = bool(data) and self._phase == "idle"
        if was_idle:
            self._guard.idle.pop(self, None)
        elif self._phase == "body":
            self._since = now
        heads = self._request_count
        super().data_received(data)
        if self._request_count > heads and self._messages:  # a request head is complete
            self._body = self._messages[-1][1]
            if self._body.is_eof():
                self._arm("busy", None)
            else:
                self._arm("body", limits.body_timeout_s)
        elif was_idle:  # the first bytes of a head (the usual whole head needs no timer)
            self._arm("head", limits.header_timeout_s)
        elif self._phase == "body" and self._body.is_eof():
            if self._answered:  # aiohttp's lingering read has emptied an answered request
                self._idle(limits.keepalive_timeout_s)
            else:
                self._arm("busy", None)
        elif self._phase == "busy" and data and self._next_head_at is None:
            self._next_head_at = now  # pipelined: its head is timed once this one is answered

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        done = await super().finish_response(request, resp, start_time)
        limits = self._guard.limits
        # No other head queued (pipelining): the request answered is the one the phase is of.
        if self._messages or self.transport is None:
            return done
        if self._phase == "body":
            self._answered = True  # answered before its body was read: idle once it is
        elif self._phase == "busy" and self._next_head_at is not None:
            self._arm("head", limits.header_timeout_s, since=self._next_head_at)
        elif self._phase == "busy":
            self._idle(limits.keepalive_timeout_s)
        return done

    def _idle(self, timeout_s: float) -> None:
        self._arm("idle", timeout_s)
        self._guard.idle[self] = None

    def _arm(self, phase: Phase, timeout_s: float | None, since: float | None = None) -> None:
        self._phase, self._since = phase, self._loop.time() if since is None else since
        self._answered, self._next_head_at = False, None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = (None if timeout_s is None
                       else self._loop.call_at(self._since + timeout_s, self._expired))

    def _expired(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self._phase == "body":
            if self._reading_paused or self._buffer_paused:
                self._since = now  # the gateway is not reading: the client is not late
            deadline = self._since + self._guard.limits.body_timeout_s
            if now < deadline:  # it sent something since the timer was set
                self._timer = self._loop.call_at(deadline, self._expired)
                return
            reason = "body_timeout"
        elif self._phase == "head":
            reason = "header_timeout"
            if self.transport is not None:
                self.transport.write(REQUEST_TIMEOUT)
        elif self._phase == "idle":
            reason = "idle_timeout"
        else:
            return
        metrics.connection_dropped(reason)
        self._guard.forget(self)
        self.force_close()


class GuardedServer(web.Server):
    """aiohttp's low-level server, making ``GuardedHandler`` connections."""

    def __init__(self, *args: Any, guard: Connections, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` serving the application through ``GuardedServer``."""

    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        # aiohttp's own keep-alive timer stays as a backstop that never fires before ours.
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout_s
                         + limits.header_timeout_s, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the application
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation,
                             loop=asyncio.get_running_loop(),
                             guard=Connections(self.limits), **plain._kwargs)


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` bounding TLS handshakes by ``header_timeout_s`` (the event loop's own
    default is 60 s, and aiohttp passes no other): a client that connects and never finishes
    its handshake holds a descriptor no longer than one that never sends its head."""

    def __init__(self, runner: GuardedRunner, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._handshake_timeout_s = runner.limits.header_timeout_s

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout_s if self._ssl_context else None)
