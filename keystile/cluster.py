"""``keystile cluster``: a production-shaped topology on this machine, every "host" a set of
real processes on a loopback address of its own — PostgreSQL primary and a streaming replica,
a Redis Cluster of three masters and three replicas, a one-shot ``keystile migrate``, the
admin API (``keystile admin``), two gateway hosts (``keystile gateway --workers 2``) that
read key lookups on cache miss from the replica, and an upstream that counts what it
received per key (keystile/cluster_upstream.py).

``Topology`` starts and stops it and can break parts of it (kill a gateway host, stop the
primary) for ``keystile cluster-check`` (keystile/clustercheck.py); ``Layout`` says where
each host listens: the fixed addresses and ports ``make cluster`` prints, or free ports for
the tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from gateway.supervision import die_with_parent_hook
from keystile.embedded import (
    EmbeddedPostgres,
    EmbeddedRedisCluster,
    StoreStartError,
    cluster_ports,
    free_port,
    write_secret,
)

START_TIMEOUT_S = 60.0  # a gateway host or the admin API, once its stores are up
STOP_TIMEOUT_S = 30.0
ROUTE = "/echo"  # the one route of the topology, to the counting upstream
USAGE_FLUSH_INTERVAL_S = 1.0  # [gateway] usage_flush_interval_s: the write-behind bound
READY = "The Keystile cluster is ready."


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each host of the topology listens. The defaults are what ``make cluster``
    uses; ``Layout.free()`` keeps the addresses and picks free ports (the tests)."""

    gateways: tuple[Endpoint, ...] = (Endpoint("127.0.0.2", 8080), Endpoint("127.0.0.3", 8080))
    admin: Endpoint = Endpoint("127.0.0.4", 8081)
    postgres: Endpoint = Endpoint("127.0.0.5", 5432)
    replica: Endpoint = Endpoint("127.0.0.6", 5432)
    upstream: Endpoint = Endpoint("127.0.0.10", 9000)
    redis: tuple[Endpoint, ...] = tuple(Endpoint(f"127.0.0.{11 + i}", 7001 + i)
                                        for i in range(6))
    workers: int = 2  # per gateway host

    @classmethod
    def free(cls, workers: int = 2) -> Layout:
        base = cls()
        redis_hosts = [e.host for e in base.redis]
        return cls(gateways=tuple(Endpoint(e.host, free_port(e.host)) for e in base.gateways),
                   admin=Endpoint(base.admin.host, free_port(base.admin.host)),
                   postgres=Endpoint(base.postgres.host, free_port(base.postgres.host)),
                   replica=Endpoint(base.replica.host, free_port(base.replica.host)),
                   upstream=Endpoint(base.upstream.host, free_port(base.upstream.host)),
                   redis=tuple(Endpoint(h, p) for h, p in
                               zip(redis_hosts, cluster_ports(redis_hosts), strict=True)),
                   workers=workers)


def config_toml(layout: Layout) -> str:
    """The one configuration file every host reads (the stores and the operator token come
    from the environment, as secrets would in production)."""
    return f"""# keystile cluster: every host reads this file; secrets come from the environment.
[gateway]
workers = {layout.workers}
usage_flush_interval_s = {USAGE_FLUSH_INTERVAL_S}
quotas_without_redis = "closed"

[[routes]]
prefix = "{ROUTE}"
upstream = "{layout.upstream.http}"
"""


@dataclass
class _Process:
    """A host's process (with its children: a gateway's workers), its output in a log."""

    name: str
    args: list[str]
    log: Path
    ready_marker: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        with self.log.open("ab") as out:
            since = out.tell()  # a restart appends: only what this start printed counts
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
                preexec_fn=die_with_parent_hook(signal.SIGTERM))
        self._wait_ready(since)

    def _printed_since(self, offset: int) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _wait_ready(self, since: int) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.ready_marker not in self._printed_since(since):
            if self.proc.poll() is not None:
                raise StoreStartError(f"{self.name} exited during start-up; its log "
                                      f"({self.log}) ends:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise StoreStartError(f"{self.name} did not start within "
                                      f"{START_TIMEOUT_S:.0f}s; see {self.log}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (a gateway finishes in-flight requests and flushes usage), then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._kill_group()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL to the whole process group at once, as a host that loses power."""
        if self.proc is None:
            return
        self._kill_group()
        self.proc.wait()
        self.proc = None

    def _kill_group(self) -> None:
        assert self.proc is not None
        with suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.proc.pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


KEYSTILE = [sys.executable, "-m", "keystile.cli"]
MARKER = ".keystile-cluster"  # in a data folder keystile cluster made (and may empty)


@dataclass
class Topology:
    """The processes of one cluster; ``start`` brings them all up in order, ``stop`` takes
    them down in reverse (always safe to call)."""

    layout: Layout
    data_dir: Path
    durable: bool = True  # PostgreSQL fsyncs (off in the tests: faster, same behaviour)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    primary: EmbeddedPostgres = field(init=False)
    replica: EmbeddedPostgres = field(init=False)
    redis: EmbeddedRedisCluster = field(init=False)
    admin: _Process = field(init=False)
    upstream: _Process = field(init=False)
    gateways: dict[str, _Process] = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        lay = self.layout
        self.primary = EmbeddedPostgres(self.data_dir / "pg-primary", host=lay.postgres.host,
                                        port=lay.postgres.port, durable=self.durable)
        self.replica = EmbeddedPostgres.replica_of(self.primary, self.data_dir / "pg-replica",
                                                   host=lay.replica.host, port=lay.replica.port)
        self.redis = EmbeddedRedisCluster(self.data_dir / "redis",
                                          hosts=[e.host for e in lay.redis],
                                          ports=[e.port for e in lay.redis])
        self.config = self.data_dir / "keystile.toml"
        self.upstream = _Process(
            "upstream", [sys.executable, "-m", "keystile.cluster_upstream",
                         "--host", lay.upstream.host, "--port", str(lay.upstream.port)],
            self.logs / "upstream.log", f"listening on {lay.upstream.http}")
        self.admin = _Process(
            "admin API", [*KEYSTILE, "admin", "--config", str(self.config),
                          "--host", lay.admin.host, "--port", str(lay.admin.port)],
            self.logs / "admin.log", f"listening on {lay.admin.http}")
        self.gateways = {
            gw.host: _Process(
                f"gateway host {gw.host}",
                [*KEYSTILE, "gateway", "--config", str(self.config), "--host", gw.host,
                 "--port", str(gw.port), "--workers", str(lay.workers)],
                self.logs / f"gateway-{gw.host}.log", f"listening on {gw.http}")
            for gw in lay.gateways}

    @property
    def database_url(self) -> str:
        return self.primary.url

    @property
    def database_read_url(self) -> str:
        return self.replica.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def env(self) -> dict[str, str]:
        """What every Keystile host gets from its environment (as from a secret store)."""
        env = {**os.environ,
               "KEYSTILE_DATABASE_URL": self.database_url,
               "KEYSTILE_REDIS_URL": self.redis_url,
               "KEYSTILE_DATABASE_READ_URL": self.database_read_url,
               "KEYSTILE_ADMIN_TOKEN": self.token,
               # A gateway killed by SIGKILL leaves its metrics folder behind: keep it here.
               "TMPDIR": str(self.data_dir / "tmp"),
               "PYTHONUNBUFFERED": "1"}
        return env

    def start(self) -> Topology:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.logs.mkdir(exist_ok=True)
            (self.data_dir / "tmp").mkdir(exist_ok=True)
            self.config.write_text(config_toml(self.layout))
            write_secret(self.data_dir / "admin-token", self.token)
            self.primary.start()
            self.replica.start()
            self.primary.wait_streaming()
            self.redis.start()
            self._migrate()
            self.upstream.start(self.env())
            self.admin.start(self.env())
            for gateway in self.gateways.values():
                gateway.start(self.env())
        except BaseException:
            self.stop()
            raise
        return self

    def _migrate(self) -> None:
        """The one-shot migrate job, against the primary."""
        done = subprocess.run([*KEYSTILE, "migrate", "--config", str(self.config)],
                              env=self.env(), capture_output=True, text=True,
                              timeout=START_TIMEOUT_S)
        if done.returncode != 0:
            raise StoreStartError(f"keystile migrate failed: {done.stderr.strip()[-500:]}")

    def stop(self) -> None:
        """Gateways first (their usage is flushed on SIGTERM), the stores last; every part
        is stopped even if stopping another failed (the first failure is raised after)."""
        parts = [*(g.stop for g in self.gateways.values()), self.admin.stop,
                 self.upstream.stop, self.redis.stop, self.replica.stop, self.primary.stop]
        failure: BaseException | None = None
        for stop in parts:
            try:
                stop()
            except BaseException as exc:  # stop the rest, then report the first failure
                failure = failure or exc
        if failure is not None:
            raise failure

    # What the checks break and mend.

    def kill_gateway(self, host: str) -> None:
        self.gateways[host].kill()

    def start_gateway(self, host: str) -> None:
        self.gateways[host].start(self.env())

    def stop_primary(self) -> None:
        self.primary.stop()

    def start_primary(self) -> None:
        self.primary.start()


def banner(top: Topology) -> str:
    lay = top.layout
    gw = [g.http for g in lay.gateways]
    admin = lay.admin.http
    redis_nodes = ", ".join(str(e) for e in lay.redis)
    return f"""
Keystile cluster is up (Ctrl-C stops everything).

  gateway hosts   {gw[0]}  {gw[1]}   ({lay.workers} workers each)
  admin API       {admin}   (OpenAPI: {admin}/openapi.json)
  upstream        {lay.upstream.http}   (echoes; requests per key id: /_upstream/counts)
  PostgreSQL      primary {top.primary.url}
                  replica {top.replica.url}
                          (streaming, read-only: the gateways' key lookups on a cache miss,
                           database_read_url)
  Redis Cluster   {redis_nodes}   (3 masters, 3 replicas)
  configuration   {top.config}
  logs            {top.logs}/

  operator token  {top.token}

Try (route {ROUTE} needs a key; the gateway forwards its id as X-Keystile-Key-Id):
  TOKEN={top.token} ADMIN={admin}
  JSON='import json, sys; print(json.load(sys.stdin)[sys.argv[1]])'
  ORG=$(curl -s -X POST $ADMIN/v1/orgs -H "Authorization: Bearer $TOKEN" \\
        -d '{{"name": "acme", "provider_id": "acme"}}' | python3 -c "$JSON" id)
  KEY=$(curl -s -X POST $ADMIN/v1/keys -H "Authorization: Bearer $TOKEN" \\
        -d '{{"org_id": "'$ORG'", "usage_limit": 100}}' | python3 -c "$JSON" key)
  curl -s -w '\\n' {gw[0]}{ROUTE}/hello -H "X-API-Key: $KEY"
  curl -s -w '\\n' {gw[1]}{ROUTE}/hello -H "X-API-Key: $KEY"
  curl -s -w '\\n' {lay.upstream.http}/_upstream/counts

`make cluster-check` proves the failure behaviour on a topology of its own.

{READY}
"""


@contextmanager
def running(layout: Layout, data_dir: Path, *, durable: bool = True) -> Iterator[Topology]:
    top = Topology(layout, data_dir, durable=durable).start()
    try:
        yield top
    finally:
        top.stop()


def run(layout: Layout, data_dir: Path) -> None:
    """``keystile cluster``: a fresh topology under ``data_dir`` until SIGINT or SIGTERM."""
    if data_dir.exists():
        # The Redis Cluster is in memory: a fresh start each time. Only a folder this made
        # is emptied: "--data-dir ." must not wipe the current one.
        if any(data_dir.iterdir()) and not (data_dir / MARKER).exists():
            raise StoreStartError(f"{data_dir} is not empty and was not made by keystile "
                                  "cluster; give --data-dir a new or empty folder")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / MARKER).write_text("made by keystile cluster: emptied at each start\n")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    print(f"starting the cluster under {data_dir} …", flush=True)
    with running(layout, data_dir) as top:
        if stop.is_set():
            return
        print(banner(top), flush=True)
        while not stop.wait(1.0):
            down = [p.name for p in (top.admin, top.upstream, *top.gateways.values())
                    if not p.running]
            if down:
                print(f"keystile cluster: {', '.join(down)} exited; see {top.logs}/; "
                      "stopping", file=sys.stderr, flush=True)
                break
        print("stopping…", flush=True)

