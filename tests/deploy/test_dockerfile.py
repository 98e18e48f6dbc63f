"""deploy/Dockerfile read as Docker reads it — instructions, stages, build arguments — since
no Docker engine runs here: a builder stage with compilers, a final stage without, run as a
non-root uid, a HEALTHCHECK that really asks /healthz, one entrypoint for every role."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

from aiohttp.test_utils import TestClient

from keystile.cli import parser
from tests.deploy.conftest import DEPLOY, ROOT, toml

COMPILERS = {"build-essential", "gcc", "g++", "cpp", "clang", "make", "cc"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) in order: comments dropped, continued lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        found.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def stages(text: str) -> list[Stage]:
    """The build stages, with ARGs declared before the first FROM substituted in FROM."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "ARG" and not found:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base, name))
        else:
            assert found, f"{keyword} before the first FROM"
            found[-1].instructions.append((keyword, rest))
    return found


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def apt_installs(stage: Stage) -> set[str]:
    """Packages a stage's RUN lines install with apt-get."""
    packages: set[str] = set()
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            words = shlex.split(command)
            if words[:1] == ["apt-get"] and "install" in words:
                packages |= {w for w in words[words.index("install") + 1:]
                             if not w.startswith("-")}
    return packages


DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
STAGES = stages(DOCKERFILE)
BUILDER, FINAL = STAGES[0], STAGES[-1]


def test_a_builder_with_compilers_and_a_final_stage_without() -> None:
    assert len(STAGES) == 2
    assert BUILDER.name == "builder" and FINAL.name is None
    assert BUILDER.base == FINAL.base and FINAL.base.startswith("python:3.11-slim")
    assert "build-essential" in apt_installs(BUILDER)
    assert any("pip install ." in run for run in BUILDER.all("RUN"))
    assert not apt_installs(FINAL) & COMPILERS
    assert not [run for run in FINAL.all("RUN") if "pip" in run or "apt-get" in run]
    copies = [c for c in FINAL.all("COPY") if c.startswith("--from=")]
    assert copies == ["--from=builder /opt/keystile /opt/keystile"]


def test_the_final_stage_runs_as_the_uid_it_creates() -> None:
    [user] = FINAL.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can check it
    assert gid.isdigit() and int(gid) != 0
    [created] = [run for run in FINAL.all("RUN") if "useradd" in run]
    assert f"--uid {uid}" in created and f"--gid {gid}" in created
    # USER comes after everything that needs root.
    keywords = [kw for kw, _ in FINAL.instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


def test_one_entrypoint_for_every_role() -> None:
    [entrypoint] = FINAL.all("ENTRYPOINT")
    assert exec_form(entrypoint) == ["keystile"]
    assert toml(ROOT / "pyproject.toml")["project"]["scripts"]["keystile"] == "keystile.cli:main"
    [cmd] = FINAL.all("CMD")
    default = exec_form(cmd)
    assert default == ["gateway", "--config", "/etc/keystile/keystile.toml"]
    for role in ("gateway", "admin", "migrate"):
        args = parser().parse_args([role, *default[1:]])
        assert (args.command, args.config) == (role, default[2])


def _healthcheck() -> tuple[list[str], dict[str, str]]:
    [check] = FINAL.all("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    env: dict[str, str] = {}
    for line in FINAL.all("ENV"):
        env |= dict(pair.split("=", 1) for pair in shlex.split(line))
    return exec_form(command), env


def test_the_healthcheck_asks_the_gateway_port_on_healthz() -> None:
    command, env = _healthcheck()
    assert command[0] == "python"  # the slim image has no curl
    assert env["KEYSTILE_HEALTHCHECK_URL"] == (
        f"http://127.0.0.1:{toml(DEPLOY / 'keystile.toml')['gateway']['port']}/healthz")
    assert str(toml(DEPLOY / "keystile.toml")["gateway"]["port"]) in FINAL.all("EXPOSE")[
        0].split()


async def test_the_healthcheck_command_passes_on_a_live_gateway_and_fails_otherwise(
        gateway: TestClient) -> None:
    """The HEALTHCHECK's own command, run as Docker would, against a real gateway."""
    command, _ = _healthcheck()
    argv = [sys.executable, *command[1:]]
    base = f"http://127.0.0.1:{gateway.port}"

    async def check(url: str) -> int:
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True,
                                       env={"KEYSTILE_HEALTHCHECK_URL": url}, timeout=30,
                                       check=False)
        return done.returncode

    assert await check(f"{base}/healthz") == 0
    assert await check(f"{base}/no-such-route") != 0  # a 404 is not healthy
    await gateway.close()
    assert await check(f"{base}/healthz") != 0  # nothing listening


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern matching the path or a parent folder wins."""
    parts = path.split("/")
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern)
               for i in range(1, len(parts) + 1)):
            verdict = not negated
    return verdict


def test_the_build_context_holds_what_the_builder_copies_and_nothing_else() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [src for stage in STAGES for copy in stage.all("COPY")
               if not copy.startswith("--from=") for src in copy.split()[:-1]]
    assert set(sources) == {"pyproject.toml", "README.md", "gateway", "admin_api",
                            "keystile", "deploy/keystile.toml"}
    # Everything setuptools packages is in the context (pyproject's packages)...
    packages = toml(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"]
    for package in packages:
        assert package.split(".")[0] in sources
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        assert files and not [f for f in files if _ignored(f, patterns)], source
    # ...and nothing else: no tests, no virtualenv, no git history, no caches.
    for other in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "bench/tools.py",
                  "deploy/compose.yaml", "gateway/__pycache__/app.cpython-311.pyc",
                  ".keystile/postgres/PG_VERSION"):
        assert _ignored(other, patterns), other
