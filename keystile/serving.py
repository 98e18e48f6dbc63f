"""Running aiohttp applications until SIGINT or SIGTERM, with start-up failures reported
as one readable line, over TLS where a listener has a certificate (reloaded on SIGHUP)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.tls import ServerTLS

log = logging.getLogger(__name__)


class ServeError(Exception):
    """A listener could not be started."""


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    app: web.Application
    host: str
    port: int
    access_log: type[AbstractAccessLogger] | None = None
    tls: ServerTLS | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def stop_event() -> asyncio.Event:
    """Set on SIGINT or SIGTERM."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


def reload_on_sighup(listeners: list[Listener]) -> None:
    """SIGHUP reloads the listeners' TLS certificates (and no longer ends the process)."""
    def reload() -> None:
        secured = [listener.tls for listener in listeners if listener.tls is not None]
        if not secured:
            log.info("SIGHUP: no TLS certificate to reload")
        for tls in secured:
            tls.reload()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


async def start(listeners: list[Listener]) -> list[web.AppRunner]:
    runners: list[web.AppRunner] = []
    try:
        for listener in listeners:
            if listener.access_log is None:
                runner = web.AppRunner(listener.app, access_log=None, handle_signals=False)
            else:
                runner = web.AppRunner(listener.app, handle_signals=False,
                                       access_log_class=listener.access_log,
                                       access_log=logging.getLogger("keystile.access"))
            runners.append(runner)
            await runner.setup()
            try:
                await web.TCPSite(runner, listener.host, listener.port,
                                  ssl_context=listener.tls.context if listener.tls else None
                                  ).start()
            except OSError as exc:
                raise ServeError(f"{listener.name} cannot listen on {listener.host}:"
                                 f"{listener.port}: {exc.strerror or exc}") from None
    except BaseException:
        await stop(runners)
        raise
    return runners


async def stop(runners: list[web.AppRunner]) -> None:
    for runner in reversed(runners):
        await runner.cleanup()
