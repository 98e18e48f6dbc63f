"""``keystile cluster`` (``make cluster``) as a user runs it, on free ports: the banner's
``curl`` lines, pasted into a shell, create a key and call both gateway hosts with it; the
upstream counted both calls; the replica streams; Ctrl-C stops every process."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path

import orjson
import psutil
import pytest

from gateway.database import connect
from keystile.cluster import READY
from tests.keystile.conftest import Cli, cli  # noqa: F401
from tests.keystile.test_cluster_check import _free


def _block(banner: str, first: str) -> str:
    """The lines of the banner from the one starting with ``first`` to the next blank."""
    lines = banner.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return "\n".join(lines[start + 1:end])


async def _streaming(url: str) -> int:
    conn = await connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_stat_replication "
                                       "WHERE state = 'streaming'"))
    finally:
        await conn.close()


def test_cluster_banner_works_and_ctrl_c_stops_everything(cli: Cli,  # noqa: F811
                                                          tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    proc = cli.start("cluster", "--data-dir", str(data_dir), "--free-ports")
    banner = cli.read_until(proc, READY, timeout=120)
    gateways = re.findall(r"http://(127\.0\.0\.[23]):(\d+)", banner.split("admin API")[0])
    assert {host for host, _ in gateways} == {"127.0.0.2", "127.0.0.3"}
    assert "127.0.0.5:" in banner and "127.0.0.6:" in banner  # primary and replica
    assert "127.0.0.11:" in banner and "127.0.0.16:" in banner  # six Redis nodes

    # The "Try" lines, as a user pastes them.
    script = _block(banner, "Try (")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    echoes = [orjson.loads(line) for line in done.stdout.splitlines()[:2]]
    key_ids = {echo["headers"]["X-Keystile-Key-Id"] for echo in echoes}
    assert len(key_ids) == 1  # one key, through both hosts
    assert {echo["headers"]["X-Forwarded-Host"] for echo in echoes} == {
        f"{host}:{port}" for host, port in gateways}
    assert orjson.loads(done.stdout.splitlines()[2]) == {key_ids.pop(): 2}

    # The replica streams from the primary.
    primary = re.search(r"primary (postgresql://\S+)", banner)
    assert primary is not None
    assert asyncio.run(_streaming(primary.group(1))) == 1

    ports = [(h, int(p)) for h, p in re.findall(r"(127\.0\.0\.\d+):(\d+)", banner)]
    assert not any(_free(h, p) for h, p in ports)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=60) == 0
    leftovers = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
                 if str(data_dir) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    assert [f"{h}:{p}" for h, p in ports if not _free(h, p)] == []


def test_cluster_refuses_to_empty_a_folder_it_did_not_make(tmp_path: Path) -> None:
    """``keystile cluster`` empties its data folder at each start: never one it did not make
    (``--data-dir .`` must not wipe the current folder)."""
    from keystile import cluster
    from keystile.embedded import StoreStartError

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    with pytest.raises(StoreStartError, match="not made by keystile cluster"):
        cluster.run(cluster.Layout.free(), tmp_path)
    assert precious.read_text() == "keep me"
