"""``keystile gateway --workers N``: N worker processes sharing one port (SO_REUSEPORT), each
on uvloop with its own pools, cache and upstream session. The parent only supervises:
it restarts a worker that dies and stops them all on SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

from aiohttp import web
from prometheus_client import multiprocess

from gateway.accesslog import AccessLogger
from gateway.app import create_app
from gateway.settings import Settings
from gateway.supervision import die_with_parent

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0


class StartError(Exception):
    """The gateway could not start; the message says why."""


async def _worker_main(settings: Settings, ready: Event) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gw = settings.gateway
    runner = web.AppRunner(create_app(settings), handle_signals=False,
                           access_log_class=AccessLogger,
                           access_log=logging.getLogger("keystile.access"))
    await runner.setup()
    try:
        await web.TCPSite(runner, gw.host, gw.port, reuse_port=True).start()
        ready.set()
        await stop.wait()
    finally:
        await runner.cleanup()


def _worker(settings: Settings, ready: Event) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Fields the format does not show, not worth looking up for every access log line.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    die_with_parent(signal.SIGTERM)  # a killed supervisor leaves no orphan serving the port
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(_worker_main(settings, ready))
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
    except Exception as exc:  # a worker reports why it could not serve, in one line
        print(f"keystile gateway worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


def _spawn(ctx: multiprocessing.context.SpawnContext, settings: Settings
           ) -> tuple[BaseProcess, Event]:
    ready = ctx.Event()
    proc = ctx.Process(target=_worker, args=(settings, ready), name="keystile-gateway-worker")
    proc.start()
    return proc, ready


def _port_is_free(host: str, port: int) -> None:
    """SO_REUSEPORT would let a second gateway share the port silently; refuse instead."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(settings: Settings, workers: int) -> None:
    _port_is_free(settings.gateway.host, settings.gateway.port)
    # Workers write their metrics here; /metrics on any of them sums all (set before they
    # start, so prometheus_client opens in multi-process mode).
    metrics_dir = tempfile.mkdtemp(prefix="keystile-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _supervise(settings, workers)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: Settings, workers: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs = [_spawn(ctx, settings) for _ in range(workers)]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        for proc, ready in procs:
            while not ready.wait(0.1):
                if not proc.is_alive():
                    raise StartError(f"a worker exited during start-up (code {proc.exitcode});"
                                     " see its message above")
                if stopping:
                    return
                if time.monotonic() > deadline:
                    raise StartError("workers did not start in time")
        gw = settings.gateway
        print(f"keystile gateway listening on http://{gw.host}:{gw.port} "
              f"({workers} worker{'s' if workers != 1 else ''})", flush=True)
        delay = RESTART_DELAY_S
        while not stopping:
            wait([p.sentinel for p, _ in procs], timeout=0.5)
            for index, (proc, _) in enumerate(procs):
                if not proc.is_alive() and not stopping:
                    log.warning("gateway worker %s exited with %s; restarting in %.0f s",
                                proc.pid, proc.exitcode, delay)
                    if proc.pid is not None:
                        multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                    time.sleep(delay)
                    delay = min(delay * 2, MAX_RESTART_DELAY_S)  # a worker that keeps dying
                    procs[index] = _spawn(ctx, settings)
    finally:
        for proc, _ in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker finishes in-flight requests
        for proc, _ in procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()
