"""Running aiohttp applications until SIGINT or SIGTERM, with start-up failures reported
as one readable line."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger


class ServeError(Exception):
    """A listener could not be started."""


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    app: web.Application
    host: str
    port: int
    access_log: type[AbstractAccessLogger] | None = None


def stop_event() -> asyncio.Event:
    """Set on SIGINT or SIGTERM."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


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
                await web.TCPSite(runner, listener.host, listener.port).start()
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
