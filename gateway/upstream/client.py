"""Keystile's upstream HTTP/1.1 client: a keep-alive pool per origin over asyncio protocols.
It is what aiohttp's ClientSession did for the proxy at about half the CPU per request, and
no more: one request, its response streamed back, no redirects, cookies or decompression."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import AsyncIterator

from gateway import tls
from gateway.upstream.connection import Connection
from gateway.upstream.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.origin import Origin
from gateway.upstream.pool import Pool
from gateway.upstream.response import UpstreamResponse

IDLE_TIMEOUT_S = 30.0  # an idle pooled connection is closed after this
MAX_IDLE = 256  # idle connections kept per origin

log = logging.getLogger(__name__)


def tls_context(ca_file: str | None, client_cert: tuple[str, str] | None = None
                ) -> ssl.SSLContext:
    """Verifies upstream certificates against ``ca_file`` if given, else the system store
    (TLS 1.2 at least, Python's default ciphers); presents ``client_cert`` (certificate and
    key files) to upstreams that ask for one. Raises CertificateError, or OSError/SSLError
    for the CA file."""
    context = ssl.create_default_context(cafile=ca_file)
    if client_cert is not None:
        tls.load_pair(context, *client_cert)
    return context


class UpstreamClient:
    def __init__(self, ca_file: str | None = None, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 max_idle: int = MAX_IDLE, client_cert: tuple[str, str] | None = None
                 ) -> None:
        self._ca_file = ca_file
        self._client_cert = client_cert
        self._idle_timeout_s = idle_timeout_s
        self._max_idle = max_idle
        self._pools: dict[str, Pool] = {}

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:  # built on first use: no cost without https upstreams
        return tls_context(self._ca_file, self._client_cert)

    def reload_tls(self) -> None:
        """Reads the CA file and client certificate again (SIGHUP): new connections use them,
        pooled ones keep what they were made with. If they cannot be loaded, the previous
        ones stay and the log says why."""
        if "_tls" not in self.__dict__:
            return  # not built yet: it will read the files when first needed
        try:
            self.__dict__["_tls"] = tls_context(self._ca_file, self._client_cert)
        except (tls.CertificateError, OSError) as exc:
            log.error("upstream TLS files NOT reloaded, still using the previous ones: %s", exc)
            return
        log.info("upstream TLS files reloaded: CAs from %s; client certificate %s",
                 self._ca_file or "the system store",
                 tls.describe(self._client_cert[0]) if self._client_cert else "none")

    async def request(self, origin: Origin, head: bytes, body: AsyncIterator[bytes] | None,
                      *, chunked: bool, head_request: bool, timeout: float
                      ) -> UpstreamResponse:
        """Sends ``head`` (request line and headers, see head.request_head) and ``body``,
        and returns once the response's head is in. ``timeout`` bounds connecting and each
        read. Raises UpstreamTimeout, UpstreamUnavailable, or what ``body`` raised."""
        pool = self._pools.get(origin.key)
        if pool is None:
            pool = self._pools[origin.key] = Pool(asyncio.get_running_loop(),
                                                  self._idle_timeout_s, self._max_idle)
        # Only a connection found closed before anything was written is passed over (take()
        # does that); once the head is written, a failure is the request's.
        conn = pool.take() or await self._connect(origin, timeout)
        sender = None
        try:
            conn.begin(head, head_request, body is not None)
            if body is not None:
                sender = asyncio.create_task(conn.send_body(body, chunked, timeout))
            await conn.wait_head(timeout)
        except BaseException:
            if sender is not None:
                sender.cancel()
            conn.finish()
            conn.close()
            raise
        return UpstreamResponse(conn, pool, sender, timeout)

    async def _connect(self, origin: Origin, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        tls = self._tls if origin.tls else None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop), origin.host, origin.port, ssl=tls,
                    server_hostname=origin.host if tls is not None else None)
        except TimeoutError:
            raise UpstreamTimeout("the upstream did not accept the connection in time"
                                  ) from None
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamUnavailable("the upstream's TLS certificate could not be verified "
                                      f"({exc.verify_message})") from None
        except ssl.SSLError as exc:
            raise UpstreamUnavailable(f"the TLS handshake with the upstream failed "
                                      f"({exc.reason})") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UpstreamUnavailable(f"the upstream could not be reached ({reason})"
                                      ) from None
        return conn

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
