"""deploy/observability: the alert rules pass promtool (and its unit tests of them), and
every metric the dashboard and the rules name is one a running gateway exports, with the
labels they select on."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin
from tests.deploy.conftest import DEPLOY

OBSERVABILITY = DEPLOY / "observability"
DASHBOARD: dict[str, Any] = orjson.loads((OBSERVABILITY / "grafana-dashboard.json").read_bytes())
RULES: dict[str, Any] = yaml.safe_load((OBSERVABILITY / "alerts.yaml").read_text())
METRIC = re.compile(r"\b(keystile_[a-z_]+)\b(?:\{([^}]*)\})?")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# What a series name adds to its family's: a histogram is read through these.
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def dashboard_exprs() -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in DASHBOARD["panels"]}


def rule_exprs() -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in RULES["groups"] for r in g["rules"]}


def all_exprs() -> list[str]:
    return [e for exprs in dashboard_exprs().values() for e in exprs] + list(
        rule_exprs().values())


def test_the_dashboard_has_the_panels_operators_need() -> None:
    panels = dashboard_exprs()
    assert set(panels) >= {
        "Requests by status", "Refusals by code", "Latency p50 / p99",
        "Limit refusals per route", "Key cache hit ratio", "Redis and PostgreSQL errors",
        "Invalidation lag", "Fast-mode over-admission"}
    assert all(panels.values())
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    # Every panel queries the dashboard's chosen Prometheus.
    assert {p["datasource"]["uid"] for p in DASHBOARD["panels"]} == {"${datasource}"}


def test_the_alert_rules_cover_stores_errors_latency_and_invalidations() -> None:
    rules = rule_exprs()
    assert set(rules) >= {"KeystileStoreDown", "KeystileHighErrorRatio", "KeystileHighLatency",
                          "KeystileInvalidationLag"}
    for group in RULES["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_promtool_checks_the_rules_and_runs_their_unit_tests(promtool: str) -> None:
    checked = subprocess.run([promtool, "check", "rules", "alerts.yaml"], cwd=OBSERVABILITY,
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", "alerts.test.yaml"],
                            cwd=OBSERVABILITY, capture_output=True, text=True, timeout=60,
                            check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Each alert is seen firing in the unit tests (and not firing before its condition).
    tests = yaml.safe_load((OBSERVABILITY / "alerts.test.yaml").read_text())
    fired = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]
             if case["exp_alerts"]}
    assert fired == set(rule_exprs())


def exposition(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The families a /metrics text declares (name -> type) and the label names seen on
    each series name."""
    families: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            found = set(re.findall(r'(\w+)="', rest.split("}")[0])) if rest else set()
            labels.setdefault(name.split()[0], set()).update(found)
    return families, labels


async def _drive(gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    """A few requests, so that labelled series appear: proxied, refused by a rate limit,
    shadow-passed over it, and with an unknown key."""
    key = await admin.key(org["id"], rate_limits=[{"limit": 1, "window_s": 60}])
    headers = {"X-API-Key": key["key"]}
    assert (await gateway.get("/maybe/x", headers=headers)).status == 200
    assert (await gateway.get("/maybe/x", headers=headers)).status == 429
    assert (await gateway.get("/shadow/x", headers=headers)).status == 200
    assert (await gateway.get("/svc/x", headers={"X-API-Key": "sk_nonsense"})).status == 401


async def test_every_metric_named_is_exported_by_a_running_gateway(
        gateway: TestClient, admin: Admin, org: dict[str, Any]) -> None:
    await _drive(gateway, admin, org)
    resp = await gateway.get("/metrics")
    assert resp.status == 200
    families, labels = exposition(await resp.text())
    series = {f"{name}{suffix}": name for name, kind in families.items()
              for suffix in SUFFIXES.get(kind, ("",))}
    named: set[str] = set()
    for expr in all_exprs():
        found = METRIC.findall(expr)
        assert found, expr
        for name, selector in found:
            named.add(name)
            assert name in series, f"{name} (in {expr!r}) is not in the gateway's /metrics"
            selected = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            if name in labels:  # series with samples: their label names are known
                assert selected <= labels[name], (name, selected, labels[name])
        grouped = {w.strip() for clause in BY.findall(expr) for w in clause.split(",")} - {""}
        known = set().union(*(labels.get(name, set()) for name, _ in found))
        if known:
            assert grouped <= known | {"le"}, (expr, grouped, known)
    # Both documented additions of issue 15 are among them.
    assert {"keystile_invalidation_lag_seconds_bucket",
            "keystile_fast_over_admitted_total"} <= named


@pytest.mark.parametrize("name", ["keystile_requests_total",
                                  "keystile_request_duration_seconds_bucket",
                                  "keystile_key_cache_total"])
async def test_the_driven_series_carry_the_labels_the_queries_use(
        gateway: TestClient, admin: Admin, org: dict[str, Any], name: str) -> None:
    """The check above compares labels only where series exist: these must exist."""
    await _drive(gateway, admin, org)
    _, labels = exposition(await (await gateway.get("/metrics")).text())
    assert name in labels
