"""wrk and nginx for the benchmark, promtool for tests/deploy and a headless Chromium for
tests/browser, from Debian's packages, unpacked into bench/.tools/ and run from there — no
system service, nothing installed system-wide. axe-core, the accessibility checker
tests/browser runs in the page, comes from PyPI into the same place."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).parent / ".tools"
PACKAGES = ("wrk", "libluajit2-5.1-2", "nginx")
CHROMIUM = ("chromium", "chromium-common", "chromium-driver")
# What a headless browser never loads: GTK's file dialogs (a choice in chromium's Depends,
# and 40-odd packages more) and the desktop helpers chromium-common names.
NOT_HEADLESS = frozenset({"libgtk-3-0", "xdg-utils", "x11-utils"})
MULTIARCH = "x86_64-linux-gnu"
# axe-core's axe.min.js (4.12.1, MPL-2.0) as this package ships it; only the file is used, so
# its Playwright dependency is not installed. The dependency-free axe-core-python ships a
# 2022 axe (4.4) and axe-selenium-python one from 2018 (3.x; its 3.0 needs Python 3.12).
AXE_PACKAGE = "axe-playwright-python==0.1.8"


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


@dataclass(frozen=True, slots=True)
class Browser:
    """Chromium and its chromedriver as unpacked here, and the environment both must run
    with (the libraries this machine lacks are found in bench/.tools)."""

    binary: str
    driver: str
    env: dict[str, str]


def chromium() -> Browser:
    """Debian's chromium and chromium-driver, with every library package they need that this
    machine has not installed; unpacked once (a stamp marks a complete unpack)."""
    binary = TOOLS / "usr" / "lib" / "chromium" / "chromium"
    driver = TOOLS / "usr" / "bin" / "chromedriver"
    stamp = TOOLS / "chromium.unpacked"
    if not (stamp.exists() and binary.exists() and driver.exists()):
        packages = _not_installed(CHROMIUM)
        _unpack(packages)
        stamp.write_text("\n".join(packages) + "\n")
    # A machine without fontconfig has no /etc/fonts; the unpacked fonts serve then. Written
    # each time: it names this checkout's path.
    fonts = TOOLS / "chromium-fonts.conf"
    fonts.write_text(
        "<?xml version=\"1.0\"?>\n<fontconfig>\n"
        "  <include ignore_missing=\"yes\">/etc/fonts/fonts.conf</include>\n"
        f"  <dir>{TOOLS}/usr/share/fonts</dir>\n"
        f"  <cachedir>{TOOLS}/var/cache/fontconfig</cachedir>\n</fontconfig>\n")
    libs = [TOOLS / "usr" / "lib" / MULTIARCH, TOOLS / "lib" / MULTIARCH,
            TOOLS / "usr" / "lib" / MULTIARCH / "pulseaudio"]
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(str(path) for path in libs),
           "FONTCONFIG_FILE": str(fonts)}
    return Browser(str(binary), str(driver), env)


def axe_core() -> Path:
    """axe.min.js, installed from PyPI into bench/.tools/axe the first time."""
    target = TOOLS / "axe"
    script = target / "axe_playwright_python" / "axe.min.js"
    if not script.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(target), AXE_PACKAGE], check=True, timeout=300)
    return script


def _not_installed(roots: tuple[str, ...]) -> tuple[str, ...]:
    """``roots`` and, following Depends and Pre-Depends, every package they need that dpkg
    has not installed. Where a dependency offers choices and none is installed the first is
    taken, as apt does; versions are not compared (the machine runs the release the
    packages come from)."""
    wanted = list(roots)
    todo = list(roots)
    while todo:
        groups = [group for fields in _control(todo).values() for group in fields]
        installed = _installed({name for group in groups for name in group})
        todo = []
        for group in groups:
            if any(name in installed or name in wanted for name in group):
                continue
            if group[0] not in NOT_HEADLESS:
                wanted.append(group[0])
                todo.append(group[0])
    return tuple(wanted)


def _control(packages: list[str]) -> dict[str, list[list[str]]]:
    """Each package's dependencies, one list of alternatives per dependency."""
    shown = _apt_cache_show(packages)
    if not shown.strip():  # the package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        shown = _apt_cache_show(packages)
    found: dict[str, list[list[str]]] = {}
    for block in shown.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", block, re.MULTILINE))
        if "Package" not in fields:
            continue
        depends = ", ".join(fields[key] for key in ("Pre-Depends", "Depends") if key in fields)
        found[fields["Package"]] = [
            [re.sub(r"\(.*?\)|:any", "", choice).strip() for choice in group.split("|")]
            for group in depends.split(",") if group.strip()]
    missing = set(packages) - set(found)
    if missing:
        raise RuntimeError(f"apt-cache knows no package {', '.join(sorted(missing))}")
    return found


def _apt_cache_show(packages: list[str]) -> str:
    return subprocess.run(["apt-cache", "show", "--no-all-versions", *packages],
                          capture_output=True, text=True, check=False).stdout


def _installed(packages: set[str]) -> set[str]:
    listed = subprocess.run(
        ["dpkg-query", "--show", "--showformat", "${Package} ${db:Status-Status}\n",
         *sorted(packages)], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in listed.splitlines() if line.endswith(" installed")}


def available() -> bool:
    return shutil.which("apt-get") is not None and shutil.which("dpkg") is not None
