"""deploy/k8s as ``kubectl kustomize`` renders it: every object the base promises, with the
probes, limits, security settings and secret references a production cluster expects."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gateway.settings import ENV_OVERRIDES, load
from tests.deploy.conftest import ALL_INTERFACES, DEPLOY, ROOT, toml

Obj = dict[str, Any]
SECRET = "keystile-secrets"
CONFIG = "/etc/keystile/keystile.toml"
SETTINGS = toml(DEPLOY / "k8s" / "keystile.toml")


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot run `kubectl kustomize deploy/k8s`")
    got = subprocess.run(["kubectl", "kustomize", "deploy/k8s"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False)
    assert got.returncode == 0, got.stderr
    return [o for o in yaml.safe_load_all(got.stdout) if o]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def pod_of(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Obj) -> Obj:
    containers = pod_of(workload)["containers"]
    assert len(containers) == 1
    only: Obj = containers[0]
    return only


def workloads(objects: list[Obj]) -> Iterator[Obj]:
    yield from (o for o in objects if o["kind"] in ("Deployment", "Job"))


def secret_refs(c: Obj) -> dict[str, str]:
    """Environment variable -> key of keystile-secrets (``?``: optional); any other value
    source fails."""
    refs = {}
    for var in c.get("env", []):
        assert "value" not in var, f"{var['name']} is written in the manifest"
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == SECRET
        refs[var["name"]] = ref["key"] + ("?" if ref.get("optional") else "")
    return refs


def probe(c: Obj, kind: str) -> tuple[str, int]:
    get = c[kind]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    return get["path"], ports.get(get["port"], get["port"])


def test_the_base_renders_every_object(rendered: list[Obj]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"].rsplit("-", 1)[0]
                    if o["kind"] == "ConfigMap" else o["metadata"]["name"]) for o in rendered)
    assert kinds == [
        ("ConfigMap", "keystile-config"),
        ("Deployment", "keystile-admin"), ("Deployment", "keystile-gateway"),
        ("HorizontalPodAutoscaler", "keystile-gateway"),
        ("Job", "keystile-migrate"),
        ("PodDisruptionBudget", "keystile-gateway"),
        ("Service", "keystile-admin"), ("Service", "keystile-gateway")]
    assert one(rendered, "HorizontalPodAutoscaler", "keystile-gateway")[
        "apiVersion"] == "autoscaling/v2"
    assert not [o for o in rendered if o["kind"] == "Secret"]  # referenced, never shipped


def test_every_pod_runs_as_non_root_on_a_read_only_root_with_resources(
        rendered: list[Obj]) -> None:
    for workload in workloads(rendered):
        name = workload["metadata"]["name"]
        pod, c = pod_of(workload), container(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name  # the image's USER
        assert pod["automountServiceAccountToken"] is False, name
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        for bound in ("requests", "limits"):
            assert set(c["resources"][bound]) == {"cpu", "memory"}, (name, bound)
        # A writable /tmp (the gateway's metrics files), the config from the ConfigMap.
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], name
        assert volumes[mounts["/etc/keystile"]]["configMap"]["name"].startswith(
            "keystile-config-"), name
        assert c["image"] == "keystile:0.1.0", name
        role = name.removeprefix("keystile-")
        assert c["args"][:3] == [role, "--config", CONFIG], name
        assert "command" not in c, name  # the image's entrypoint: keystile


def test_the_config_map_holds_the_toml_the_pods_mount(rendered: list[Obj]) -> None:
    maps = [o for o in rendered if o["kind"] == "ConfigMap"]
    text = (DEPLOY / "k8s" / "keystile.toml").read_text()
    assert maps[0]["data"] == {"keystile.toml": text}
    for workload in workloads(rendered):
        volumes = [v for v in pod_of(workload)["volumes"] if "configMap" in v]
        assert [v["configMap"]["name"] for v in volumes] == [maps[0]["metadata"]["name"]]
    settings = load(DEPLOY / "k8s" / "keystile.toml", {
        "KEYSTILE_DATABASE_URL": "postgresql://keystile:pw@postgres:5432/keystile",
        "KEYSTILE_REDIS_URL": "redis://:pw@redis:6379/0"})
    assert settings.gateway.host == settings.admin.host == ALL_INTERFACES


def test_the_kubernetes_toml_is_the_compose_one_with_other_routes() -> None:
    compose = toml(DEPLOY / "keystile.toml")
    assert {k: v for k, v in SETTINGS.items() if k != "routes"} == {
        k: v for k, v in compose.items() if k != "routes"}
    assert SETTINGS["routes"] and SETTINGS["routes"] != compose["routes"]


def test_secrets_are_referenced_where_each_role_needs_them(rendered: list[Obj]) -> None:
    stores = {"KEYSTILE_DATABASE_URL": "database-url", "KEYSTILE_REDIS_URL": "redis-url"}
    gateway = container(one(rendered, "Deployment", "keystile-gateway"))
    admin = container(one(rendered, "Deployment", "keystile-admin"))
    migrate = container(one(rendered, "Job", "keystile-migrate"))
    # No operator token on the data plane; a read replica if the Secret names one.
    assert secret_refs(gateway) == {**stores, "KEYSTILE_DATABASE_READ_URL": "database-read-url?"}
    for workload in workloads(rendered):  # each one a variable Keystile reads
        assert set(secret_refs(container(workload))) <= set(ENV_OVERRIDES)
    assert secret_refs(admin) == {**stores, "KEYSTILE_ADMIN_TOKEN": "admin-token"}
    assert secret_refs(migrate) == {"KEYSTILE_DATABASE_URL": "database-url"}


def test_the_gateway_probes_scale_and_disruption_budget(rendered: list[Obj]) -> None:
    deployment = one(rendered, "Deployment", "keystile-gateway")
    c = container(deployment)
    port = SETTINGS["gateway"]["port"]
    # README "When a store fails": the gateway keeps serving through a store outage, so
    # once started it is ready while alive (/healthz); /readyz gates its first traffic.
    assert probe(c, "startupProbe") == ("/readyz", port)
    assert probe(c, "readinessProbe") == ("/healthz", port)
    assert probe(c, "livenessProbe") == ("/healthz", port)
    assert "replicas" not in deployment["spec"]  # the HPA's
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    hpa = one(rendered, "HorizontalPodAutoscaler", "keystile-gateway")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "keystile-gateway"}
    [metric] = hpa["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in c["resources"]["requests"]  # what utilisation is measured against
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]

    pdb = one(rendered, "PodDisruptionBudget", "keystile-gateway")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["minAvailable"] < hpa["minReplicas"]  # a node can still be drained


def test_the_admin_api_probes(rendered: list[Obj]) -> None:
    c = container(one(rendered, "Deployment", "keystile-admin"))
    port = SETTINGS["admin"]["port"]
    assert probe(c, "readinessProbe") == ("/readyz", port)
    assert probe(c, "livenessProbe") == ("/healthz", port)


def test_the_migrate_job_runs_once_and_is_bounded(rendered: list[Obj]) -> None:
    job = one(rendered, "Job", "keystile-migrate")
    assert pod_of(job)["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["activeDeadlineSeconds"] > 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_services_reach_their_pods(rendered: list[Obj]) -> None:
    for role in ("gateway", "admin"):
        service = one(rendered, "Service", f"keystile-{role}")["spec"]
        deployment = one(rendered, "Deployment", f"keystile-{role}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= labels.items(), role
        names = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        [port] = service["ports"]
        assert names[port["targetPort"]] == SETTINGS[role]["port"], role
