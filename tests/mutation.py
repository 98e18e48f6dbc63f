"""Targeted mutation testing: break one thing a user relies on, run the tests that should
notice, and report the mutants the suite lets live.

Each mutant replaces one exact snippet of the product code in a private copy of the tree
(the checkout is never touched) and runs the named tests there with ``-x``. A mutant is
*killed* when the tests fail (or hang past the time-out), *survives* when they pass, and is
*stale* when its snippet is no longer in the file — then the list below needs updating.

    make mutants                      # every mutant (about 15 minutes on 2 cores)
    .venv/bin/python tests/mutation.py -k grace -k scope   # those whose name matches
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


GATEWAY = ("tests/gateway",)
LIMITS = ("tests/gateway/test_limits.py", "tests/gateway/test_limits_review.py",
          "tests/gateway/test_limit_state.py", "tests/gateway/test_fastlimits.py",
          "tests/gateway/test_failures.py", "tests/gateway/test_failure_policies.py",
          "tests/gateway/test_refusals_spend_nothing.py", "tests/gateway/test_store_deadline.py")

MUTANTS: tuple[Mutant, ...] = (
    # The pipeline: order and presence of the stages.
    Mutant("scope stage skipped", "gateway/pipeline.py",
           "    scope.check,", "", GATEWAY),
    Mutant("state stage skipped", "gateway/pipeline.py",
           "    state.check,", "", GATEWAY),
    Mutant("provider stage skipped", "gateway/pipeline.py",
           "    provider.check,", "", GATEWAY),
    Mutant("limits before scope", "gateway/pipeline.py",
           "    scope.check,        # 403 insufficient_scope\n"
           "    limits.spend,",
           "    limits.spend,\n    scope.check,", GATEWAY),
    Mutant("limits before state", "gateway/pipeline.py",
           "    state.check,", "    limits.spend,\n    state.check,", GATEWAY),
    # Key state, provider, scopes.
    Mutant("paused counts as active", "gateway/verification.py",
           '"paused": Code.KEY_PAUSED', '"paused": Code.VALID', GATEWAY),
    Mutant("expired counts as active", "gateway/verification.py",
           '"expired": Code.KEY_EXPIRED', '"expired": Code.VALID', GATEWAY),
    Mutant("any provider accepted", "gateway/verification.py",
           "if provider_org_id is not None and provider_org_id != record.org_id:",
           "if False:", GATEWAY),
    Mutant("resource wildcard grants everything", "gateway/scopes.py",
           'scope in ("*", wanted, f"{resource}:*")',
           'scope in ("*", wanted) or scope.endswith(":*")', GATEWAY),
    # The key cache and rotation.
    Mutant("rotation grace ignored by the gateway", "gateway/keycache.py",
           "return secret_expires_at is not None and secret_expires_at <= now",
           "return False", GATEWAY),
    Mutant("invalidation of one key ignored", "gateway/keycache.py",
           "        stale = [d for d, e in self.entries.items()",
           "        return\n        stale = [d for d, e in self.entries.items()", GATEWAY),
    Mutant("in-flight lookup may cache a stale record", "gateway/keycache.py",
           "if generation != self.generation or self.size == 0:",
           "if self.size == 0:", GATEWAY),
    Mutant("short TTL while unsubscribed ignored", "gateway/keycache.py",
           "(self.ttl_s if heard else self.unsubscribed_ttl_s)", "self.ttl_s", GATEWAY),
    Mutant("negative cache never expires", "gateway/keycache.py",
           "            if until > now:\n                return False",
           "            return False", GATEWAY),
    # Limits.
    Mutant("rate limit off by one", "gateway/limits/script.py",
           "and inside + need > limit then", "and inside + need > limit + 1 then", LIMITS),
    Mutant("quota off by one", "gateway/limits/script.py",
           "qused + need > quota_limit then", "qused + need > quota_limit + 1 then", LIMITS),
    Mutant("lifetime limit off by one", "gateway/limits/script.py",
           "used + need > usage_limit then", "used + need > usage_limit + 1 then", LIMITS),
    Mutant("refused request spends anyway", "gateway/limits/script.py",
           "local spend = (verdict == 0 or not enforce) and cost > 0",
           "local spend = cost > 0", LIMITS),
    Mutant("closed rate-limit policy ignored", "gateway/stages/limits.py",
           'if policy.rate_limits_without_redis == "closed":', "if False:", LIMITS),
    Mutant("closed quota policy ignored", "gateway/stages/limits.py",
           'if policy.quotas_without_redis == "closed":', "if False:", LIMITS),
    Mutant("shadow mode enforces", "gateway/stages/limits.py",
           "            if route.enforce:\n                raise _refusal(ex, decision)",
           "            raise _refusal(ex, decision)", LIMITS),
    Mutant("usage not recorded", "gateway/stages/limits.py",
           "        deps.usage.record(key.id, route.cost, now)", "        pass", LIMITS),
    Mutant("RateLimit-Reset dropped", "gateway/limits/headers.py",
           '        headers["RateLimit-Reset"] = str(math.ceil(reset))\n', "", GATEWAY),
    Mutant("RateLimit-Policy lists one window", "gateway/limits/headers.py",
           'for w in windows]', 'for w in windows[:1]]', GATEWAY),
    Mutant("Retry-After dropped", "gateway/limits/headers.py",
           'headers["Retry-After"] = str(decision.retry_after_s)', "pass", GATEWAY),
    # Paths.
    Mutant("'..' not resolved", "gateway/paths.py",
           "            segments.pop()\n", "", ("tests/gateway/test_paths.py",
                                                "tests/gateway/test_path_safety.py")),
    Mutant("stray '%' checked after decoding", "gateway/paths.py",
           "    if _STRAY_PERCENT.search(raw_path):", "    if False:",
           ("tests/gateway/test_paths.py", "tests/gateway/test_path_safety.py",
            "tests/gateway/test_path_safety_nginx.py")),
    Mutant("NFKC look-alikes accepted", "gateway/paths.py",
           'unicodedata.normalize("NFKC", char) != char', "False", GATEWAY),
    # What reaches the upstream besides the path.
    Mutant("keys in the query string forwarded", "gateway/stages/credential.py",
           "if ex.query and key_in_query(ex.query, ex.raw_key):", "if False:", GATEWAY),
    Mutant("keys in the path forwarded", "gateway/stages/credential.py",
           "if key_in(ex.path, ex.raw_key):", "if False:", GATEWAY),
    Mutant("header stage skipped", "gateway/pipeline.py",
           "    headers.check,", "", GATEWAY),
    # Rotation in the control plane, and the store deadline in the spend script.
    Mutant("rotation grace extended by an hour", "admin_api/repository/keys.py",
           "now() + $2)", "now() + $2 + interval '1 hour')",
           ("tests/admin_api/test_rotate.py", "tests/gateway/test_rotation_grace.py")),
    Mutant("late spend scripts spend anyway", "gateway/limits/script.py",
           "if mode ~= 'r' and deadline > 0 and now > deadline then return {-2, now} end", "",
           LIMITS),
    # The bucketed windows: counting only the buckets wholly inside the window over-admits;
    # counting one bucket more than needed refuses too early.
    Mutant("oldest overlapping bucket not counted", "gateway/limits/script.py",
           "for idx = head - st.d[3 * k] + 1, lo - 1 do",
           "for idx = head - st.d[3 * k] + 1, lo do",
           LIMITS),
    Mutant("one bucket too many counted", "gateway/limits/script.py",
           "for idx = head - st.d[3 * k] + 1, lo - 1 do",
           "for idx = head - st.d[3 * k] + 1, lo - 2 do",
           LIMITS),
    Mutant("prefix match ignores segment boundary", "gateway/paths.py",
           'return path == prefix or path.startswith(prefix.rstrip("/") + "/")',
           "return path.startswith(prefix)", GATEWAY),
)


def _copy_tree(into: Path) -> None:
    """The checkout as it is now (uncommitted changes included), without .venv and caches."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run(mutant: Mutant, tree: Path, timeout_s: float) -> str:
    target = tree / mutant.path
    original = target.read_text()
    if original.count(mutant.old) != 1:
        return "stale"
    target.write_text(original.replace(mutant.old, mutant.new))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               *mutant.tests], cwd=tree, env=env, capture_output=True,
                              timeout=timeout_s)
        if done.returncode == 0:
            return "survived"
        if done.returncode != 1:  # not a test failure: the mutant broke the collection
            return f"invalid (pytest exit {done.returncode})"
        failed = [line.split(" ", 1)[1] for line in done.stdout.decode().splitlines()
                  if line.startswith(("FAILED ", "ERROR "))]
        return f"killed by {failed[0] if failed else 'exit ' + str(done.returncode)}"
    except subprocess.TimeoutExpired:
        return "killed (time-out)"
    finally:
        target.write_text(original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", action="append", default=[],
                        help="run only mutants whose name contains this (repeatable)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.k or any(k in m.name for k in args.k)]
    survivors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="keystile-mutants-") as folder:
        tree = Path(folder)
        _copy_tree(tree)
        for mutant in chosen:
            started = time.monotonic()
            verdict = run(mutant, tree, args.timeout)
            print(f"{time.monotonic() - started:5.0f} s  {mutant.name} ({mutant.path}): "
                  f"{verdict}", flush=True)
            if not verdict.startswith("killed"):
                survivors.append(f"{verdict}: {mutant.name}")
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutants killed")
    for line in survivors:
        print("  " + line)
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
