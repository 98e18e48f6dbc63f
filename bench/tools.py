"""wrk and nginx for the benchmark, and promtool for tests/deploy, from Debian's packages,
unpacked into bench/.tools/ and run from there — no system service, nothing installed
system-wide."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

TOOLS = Path(__file__).parent / ".tools"
PACKAGES = ("wrk", "libluajit2-5.1-2", "nginx")


def _unpack(packages: tuple[str, ...] = PACKAGES) -> None:
    TOOLS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["apt-get", "download", *packages], cwd=tmp,
                             capture_output=True, text=True, check=False)
        if got.returncode != 0:
            # The package lists may be missing on a fresh machine.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            got = subprocess.run(["apt-get", "download", *packages], cwd=tmp,
                                 capture_output=True, text=True, check=False)
        if got.returncode != 0:
            raise RuntimeError(f"apt-get download failed: {got.stderr.strip()[-300:]}")
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(TOOLS)], check=True)


def wrk() -> list[str]:
    binary = TOOLS / "usr" / "bin" / "wrk"
    if not binary.exists():
        _unpack()
    return [str(binary)]


def wrk_env() -> dict[str, str]:
    libs = TOOLS / "usr" / "lib" / "x86_64-linux-gnu"
    return {**os.environ, "LD_LIBRARY_PATH": str(libs)}


def nginx() -> str:
    binary = TOOLS / "usr" / "sbin" / "nginx"
    if not binary.exists():
        _unpack()
    return str(binary)


def promtool() -> str:
    """Prometheus's rule checker (Debian's ``prometheus`` package ships it; only the package
    is unpacked, nothing runs)."""
    binary = TOOLS / "usr" / "bin" / "promtool"
    if not binary.exists():
        _unpack(("prometheus",))
    return str(binary)


def available() -> bool:
    return shutil.which("apt-get") is not None and shutil.which("dpkg") is not None
