"""``keystile gateway --workers N``: N worker processes sharing one port (SO_REUSEPORT), each
on uvloop with its own pools, cache and upstream session. The parent only supervises:
it restarts a worker that dies, stops them all on SIGINT or SIGTERM, and passes SIGHUP on
(each worker then reloads its TLS certificate and upstream TLS files)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

from prometheus_client import multiprocess

from gateway import logsink
from gateway.accesslog import AccessLogger
from gateway.app import create_app
from gateway.connections import GuardedRunner, GuardedSite, Limits
from gateway.settings import GatewaySettings, Settings
from gateway.state import DEPS
from gateway.supervision import Backoff, die_with_parent
from gateway.tls import CertificateError, ServerTLS

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
FEW_CONNECTIONS = 16  # a worker that can hold fewer is easily filled: say so at start-up
POLL_S = 0.5  # the longest SIGTERM or a worker's scheduled restart waits to be noticed


class StartError(Exception):
    """The gateway could not start; the message says why."""


def _server_tls(gw: GatewaySettings) -> ServerTLS | None:
    if gw.tls_cert_file is None or gw.tls_key_file is None:
        return None
    try:
        return ServerTLS("gateway", gw.tls_cert_file, gw.tls_key_file)
    except CertificateError as exc:  # the files changed since the configuration was read
        raise StartError(f"[gateway] TLS certificate: {exc}") from None


def url(gw: GatewaySettings) -> str:
    scheme = "https" if gw.tls_cert_file is not None else "http"
    return f"{scheme}://{gw.host}:{gw.port}"


async def _worker_main(settings: Settings, ready: Event) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gw = settings.gateway
    app = create_app(settings)
    server_tls: ServerTLS | None = None

    def reload() -> None:
        if server_tls is not None:
            server_tls.reload()
        deps = app.get(DEPS)
        if deps is not None:
            deps.upstream.reload_tls()

    # Before the certificate is first read: a SIGHUP from then on finds it read after.
    loop.add_signal_handler(signal.SIGHUP, reload)
    server_tls = _server_tls(gw)
    limits = Limits.of(settings)
    if limits.max_connections < FEW_CONNECTIONS:
        log.warning("this worker can hold only %d client connections (max_connections, or "
                    "its descriptor limit: raise `ulimit -n`)", limits.max_connections)
    runner = GuardedRunner(app, limits, handle_signals=False,
                           access_log_class=AccessLogger,
                           access_log=logging.getLogger("keystile.access"))
    await runner.setup()
    try:
        await GuardedSite(runner, gw.host, gw.port, reuse_port=True,
                          ssl_context=server_tls.context if server_tls else None).start()
        ready.set()
        await stop.wait()
    finally:
        await runner.cleanup()


def _worker(settings: Settings, ready: Event) -> None:
    # A SIGHUP sent to the whole process group must not end a worker still starting (its
    # handler comes with its event loop); the supervisor passes one on once it is ready.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    handler = logsink.install()
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
        handler.flush()  # what it logged first comes first
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


def serve(settings: Settings, workers: int, restarts: Backoff | None = None) -> None:
    """Runs ``workers`` workers until SIGINT or SIGTERM; ``restarts`` is the restart delay
    policy of each worker slot (tests shorten it)."""
    _port_is_free(settings.gateway.host, settings.gateway.port)
    # Workers write their metrics here; /metrics on any of them sums all (set before they
    # start, so prometheus_client opens in multi-process mode).
    metrics_dir = tempfile.mkdtemp(prefix="keystile-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _supervise(settings, workers, restarts or Backoff())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


@dataclass
class _Slot:
    """One worker's place: its process while it runs, else when to start the next one."""

    backoff: Backoff
    proc: BaseProcess | None = None
    ready: Event | None = None  # kept while the worker lives: the child opens it after start
    started: float = 0.0
    restart_at: float | None = None
    reload: bool = False  # a SIGHUP to pass on once the worker is ready for it


def _supervise(settings: Settings, workers: int, restarts: Backoff) -> None:
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def reload(signum: int, frame: object) -> None:
        # Only noted here: the supervisor's loop passes it on (within POLL_S), as taking
        # a worker's ready lock inside a signal handler could deadlock with the loop.
        for slot in slots:
            slot.reload = True

    slots = [_Slot(dataclasses.replace(restarts)) for _ in range(workers)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        starting = []
        for slot in slots:
            slot.proc, slot.ready = _spawn(ctx, settings)
            slot.started = time.monotonic()
            starting.append((slot.proc, slot.ready))
        for proc, ready in starting:
            while not ready.wait(0.1):
                if not proc.is_alive():
                    raise StartError(f"a worker exited during start-up (code {proc.exitcode});"
                                     " see its message above")
                if stopping:
                    return
                if time.monotonic() > deadline:
                    raise StartError("workers did not start in time")
        print(f"keystile gateway listening on {url(settings.gateway)} "
              f"({workers} worker{'s' if workers != 1 else ''})", flush=True)
        while not stopping:
            _restart_due(ctx, settings, slots)
            _pass_reloads(slots)
            # Never sleep through a restart delay: wake for any death, the next restart due,
            # or (at least every POLL_S) to notice SIGTERM.
            now = time.monotonic()
            timeout = min([POLL_S, *(s.restart_at - now for s in slots
                                     if s.restart_at is not None)])
            wait([s.proc.sentinel for s in slots if s.proc is not None],
                 timeout=max(timeout, 0.0))
    finally:
        procs = [s.proc for s in slots if s.proc is not None]
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker finishes in-flight requests
        for proc in procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _pass_reloads(slots: list[_Slot]) -> None:
    """Sends SIGHUP to each ready worker with one due (a worker not yet ready has not
    installed its handler, and SIGHUP would end it)."""
    passed = []
    for slot in slots:
        proc, ready = slot.proc, slot.ready
        if slot.reload and proc is not None and proc.pid is not None and ready is not None \
                and ready.is_set():
            slot.reload = False
            with contextlib.suppress(ProcessLookupError):  # it died meanwhile: restarted
                os.kill(proc.pid, signal.SIGHUP)
                passed.append(proc.pid)
    if passed:
        log.info("SIGHUP passed on to workers %s: they reload their TLS files",
                 ", ".join(map(str, passed)))


def _restart_due(ctx: multiprocessing.context.SpawnContext, settings: Settings,
                 slots: list[_Slot]) -> None:
    """Notes which workers died (scheduling each one's restart after its slot's own delay)
    and starts those whose delay is over; never waits."""
    now = time.monotonic()
    for slot in slots:
        proc = slot.proc
        if proc is not None and not proc.is_alive():
            delay = slot.backoff.after_exit(slot.started, now)
            log.warning("gateway worker %s exited with %s; restarting in %.1f s",
                        proc.pid, proc.exitcode, delay)
            if proc.pid is not None:
                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
            slot.proc, slot.ready, slot.restart_at = None, None, now + delay
        if slot.restart_at is not None and now >= slot.restart_at:
            slot.proc, slot.ready = _spawn(ctx, settings)
            slot.started, slot.restart_at = now, None
