"""deploy/Dockerfile read as Docker reads it — instructions, stages, build arguments — since
no Docker engine runs here: a builder stage with compilers, a final stage without, run as a
non-root uid, a HEALTHCHECK that really asks /healthz, one entrypoint for every role."""

from __future__ import annotations

import asyncio
import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
from aiohttp.test_utils import TestClient
from dockerfile import Command

from keystile.cli import parser
from tests.deploy.conftest import DEPLOY, ROOT, toml

COMPILERS = {"build-essential", "gcc", "g++", "cpp", "clang", "make", "cc"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Command] = field(default_factory=list)

    def all(self, keyword: str) -> list[Command]:
        return [c for c in self.instructions if c.cmd == keyword]


def stages(text: str) -> list[Stage]:
    """The build stages as BuildKit's own parser reads the file, with the ARGs declared
    before the first FROM substituted in FROM."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for command in dockerfile.parse_string(text):
        if command.cmd == "ARG" and not found:
            name, _, default = command.value[0].partition("=")
            args[name] = default
        elif command.cmd == "FROM":
            words = command.value
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base, name))
        else:
            assert found, f"{command.cmd} before the first FROM"
            found[-1].instructions.append(command)
    return found


def exec_form(command: Command) -> list[str]:
    assert command.json, f"{command.original}: not in exec form (no shell between)"
    return list(command.value)


def apt_installs(stage: Stage) -> set[str]:
    """Packages a stage's RUN lines install with apt-get."""
    packages: set[str] = set()
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;|\|\|", run.value[0]):
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
    assert any("pip install ." in run.value[0] for run in BUILDER.all("RUN"))
    assert not apt_installs(FINAL) & COMPILERS
    assert not [r for r in FINAL.all("RUN") if "pip" in r.value[0] or "apt-get" in r.value[0]]
    copies = [(c.flags, c.value) for c in FINAL.all("COPY") if c.flags]
    assert copies == [(("--from=builder",), ("/opt/keystile", "/opt/keystile"))]


def test_the_final_stage_runs_as_the_uid_it_creates() -> None:
    [user] = FINAL.all("USER")
    uid, _, gid = user.value[0].partition(":")
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can check it
    assert gid.isdigit() and int(gid) != 0
    [created] = [run.value[0] for run in FINAL.all("RUN") if "useradd" in run.value[0]]
    assert f"groupadd --system --gid {gid} keystile" in created
    assert f"useradd --system --uid {uid} --gid keystile" in created
    # USER comes after everything that needs root.
    keywords = [c.cmd for c in FINAL.instructions]
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
    options = dict(flag.lstrip("-").split("=", 1) for flag in check.flags)
    assert set(options) >= {"interval", "timeout", "start-period"}
    kind, *command = exec_form(check)
    assert kind == "CMD"
    env: dict[str, str] = {}
    for line in FINAL.all("ENV"):
        env |= dict(zip(line.value[::2], line.value[1::2], strict=True))
    return command, env


def test_the_healthcheck_asks_the_gateway_port_on_healthz() -> None:
    command, env = _healthcheck()
    assert command[0] == "python"  # the slim image has no curl
    assert env["KEYSTILE_HEALTHCHECK_URL"] == (
        f"http://127.0.0.1:{toml(DEPLOY / 'keystile.toml')['gateway']['port']}/healthz")
    assert str(toml(DEPLOY / "keystile.toml")["gateway"]["port"]) in FINAL.all("EXPOSE")[
        0].value


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
    sources = [src for stage in STAGES for copy in stage.all("COPY") if not copy.flags
               for src in copy.value[:-1]]
    assert set(sources) == {"pyproject.toml", "README.md", "gateway", "admin_api",
                            "keystile", "deploy/keystile.toml"}
    # Everything setuptools packages is in the context (pyproject's packages)...
    found = toml(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"]["find"]
    assert {package.split(".")[0] for package in found["include"]} <= set(sources)
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        assert files and not [f for f in files if _ignored(f, patterns)], source
    # ...and nothing else: no tests, no virtualenv, no git history, no caches.
    for other in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "bench/tools.py",
                  "deploy/compose.yaml", "gateway/__pycache__/app.cpython-311.pyc",
                  ".keystile/postgres/PG_VERSION"):
        assert _ignored(other, patterns), other


def test_the_package_builds_from_the_build_context_alone(tmp_path: Path) -> None:
    """What the builder's ``pip install .`` sees — the context .dockerignore leaves — is a
    complete package: every module of every subpackage, the migrations' SQL, the
    ``keystile`` command. (A non-editable install is not what development uses: it once
    left out every subpackage.)"""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    context = tmp_path / "context"
    for top in ROOT.iterdir():
        if _ignored(top.name, patterns) and not any(
                p.lstrip("!").startswith(f"{top.name}/") for p in patterns):
            continue  # wholly left out (the repository's .git, .venv, tests, ...)
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            rel = str(path.relative_to(ROOT))
            if path.is_file() and not _ignored(rel, patterns):
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, context / rel)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                            "--wheel-dir", str(tmp_path / "dist"),
                            str(context)], capture_output=True, text=True, timeout=300,
                           check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("keystile-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for top in ("gateway", "admin_api", "keystile")
               for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert "gateway/limits/fast.py" in modules
    assert modules <= names, sorted(modules - names)  # subpackages included
    migrations = {p.name for p in (ROOT / "admin_api" / "migrations").glob("*.sql")}
    assert migrations and {f"admin_api/migrations/{m}" for m in migrations} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "keystile = keystile.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
