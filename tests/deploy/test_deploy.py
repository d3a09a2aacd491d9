"""Static checks of everything that cannot run here (no Docker engine, no cluster): the two
Dockerfiles through hadolint, every kustomize-rendered manifest against the Kubernetes schemas,
docker-compose.yml against the Compose specification, and the names that tie them to the code
(FLIP_ settings, metric names, probe routes). Each validator is also shown to reject a broken file,
so a pass means something."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from app import metrics
from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["gpu", "cpu"]
# Oldest and newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Names another branch adds (auth, queueing); the deployment files already use them.
PENDING_SETTINGS = {"FLIP_API_KEYS"}
PENDING_METRICS = {"flip_queue_depth", "flip_engine_batch_size", "flip_embedding_batch_size"}


def tool(name: str) -> str:
    """A command-line tool installed by a pip wheel (the `test` extra) next to this Python."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} not found: install the test extra (pip install -e '.[test]')"
    return found


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120, **kw)


# --- Dockerfiles


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_passes_hadolint(dockerfile):
    result = run(tool("hadolint"), "--no-color", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_sloppy_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = run(tool("hadolint"), "--no-color", str(bad))
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_images_run_as_non_root_with_healthcheck_on_health(dockerfile):
    text = (ROOT / dockerfile).read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)
    assert "FLIP_CACHE_DIR=/models" in text and 'VOLUME ["/models"]' in text
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest"), "the base image must be pinned"


# --- Kubernetes


def render(overlay: str) -> list[dict]:
    result = run(tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def by_kind(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_overlay_renders_every_resource(rendered):
    _, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                            "HorizontalPodAutoscaler", "ServiceMonitor"])
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"flip-reward"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(rendered, version):
    _, docs = rendered
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema ships with kubernetes-validate (checked below by hand)
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked == len(docs) - 1


def test_schema_validation_rejects_a_broken_deployment():
    deployment = by_kind(render("gpu"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/health"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = by_kind(render("gpu"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStopp"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_deployment_probes_and_shutdown(rendered):
    overlay, docs = rendered
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model loading needs minutes"
    config = by_kind(docs, "ConfigMap")["data"]
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace_s = float(config["FLIP_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + grace_s + 10
    assert pod["securityContext"]["runAsNonRoot"] is True
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") if overlay == "gpu" else gpus is None
    assert container["image"] == f"flip-reward:{overlay}"


def test_probe_routes_exist_in_the_app():
    from app.main import create_app

    paths = {route.path for route in create_app(Settings()).routes}
    assert {"/health", "/ready", "/metrics"} <= paths


def test_config_and_secret_names_are_settings(rendered):
    _, docs = rendered
    known = {f"FLIP_{name.upper()}" for name in Settings.model_fields} | PENDING_SETTINGS
    names = set(by_kind(docs, "ConfigMap")["data"]) | set(by_kind(docs, "Secret")["data"])
    flip_names = {n for n in names if n.startswith("FLIP_")}
    assert flip_names and flip_names <= known, flip_names - known
    env_from = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {e.get("secretRef", {}).get("name") for e in env_from} >= {by_kind(docs, "Secret")["metadata"]["name"]}


def test_service_monitor_pdb_and_hpa_point_at_the_service(rendered):
    _, docs = rendered
    service = by_kind(docs, "Service")
    deployment = by_kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    monitor = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"

    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    adapter = yaml.safe_load((K8S / "prometheus-adapter.yaml").read_text())
    exposed = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert metric["pods"]["metric"]["name"] in exposed


# --- docker compose, Prometheus, Grafana


def test_compose_file_matches_the_compose_specification():
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validation_rejects_a_typo(tmp_path):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose["services"]["flip-reward"]["deploy"]["resources"]["reservations"]["devices"][0]["capability"] = ["gpu"]
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode != 0


def test_compose_services():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    gpu, cpu = services["flip-reward"], services["flip-reward-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for service in (gpu, cpu):
        assert "flip-models:/models" in service["volumes"] and service["healthcheck"]["test"]
        assert "flip" in service["networks"]["default"]["aliases"]
    assert {"prometheus", "grafana"} <= services.keys()
    known = {f"FLIP_{name.upper()}" for name in Settings.model_fields}
    assert {k for s in (gpu, cpu) for k in s["environment"]} <= known
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] if job["job_name"] == "flip-reward"
               for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["flip:8000"]


def _exported_metric_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.add(family.name)
                kind = family.type
                suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
                names.update(family.name + s for s in suffixes.get(kind, []))
    return names


def test_dashboard_uses_only_metrics_the_service_exports():
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/flip-reward.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bflip_[a-z_]+", expr)}
    pending = {n + s for n in PENDING_METRICS for s in ("", "_bucket", "_sum", "_count")}
    unknown = used - _exported_metric_names() - pending
    assert not unknown, f"dashboard queries metrics nobody exports: {unknown}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "errors", "latency", "queue depth", "batch sizes", "tokens/s", "reward distribution"):
        assert topic in titles


def test_grafana_provisioning_points_at_the_dashboard_folder():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/flip-reward.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == folder
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/flip-reward.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["datasources"][0]["uid"]}
