"""Static checks of everything that cannot run here (no Docker engine, no cluster): the two
Dockerfiles through hadolint and their layer order, every kustomize overlay (found on disk, so a new
one is covered) and every optional component rendered and validated against the Kubernetes schemas,
docker-compose.yml against the Compose specification, and the properties a platform engineer checks
first (no replicas beside an HPA, rollouts that need no spare GPU, loopback ports, grace periods
longer than the drain, read-only roots, keys as files), with the names that tie them to the code
(FLIP_ settings, metric names, probe routes). Each validator is also shown to reject a broken file,
so a pass means something."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from flip_reward import metrics, server
from flip_reward.config import Settings
from flip_reward.engines.vllm_local import VLLMEngine

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml"))
# Custom resources: no schema ships with kubernetes-validate (checked below by hand).
CRD_GROUPS = ("monitoring.coreos.com/", "gateway.networking.k8s.io/")
# Oldest and newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Names another branch adds (auth, queueing); the deployment files already use them.
PENDING_METRICS = {"flip_queue_depth", "flip_engine_batch_size", "flip_embedding_batch_size"}


def tool(name: str) -> str:
    """A command-line tool installed by a pip wheel (the `test` extra) next to this Python."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} not found: install the test extra (pip install -e '.[test]')"
    return found


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, capture_output=True, text=True, cwd=ROOT, timeout=120, **kw)


def drain_s(shutdown_grace_s: float) -> float:
    """Seconds from SIGTERM to the exit at most: the requests' grace, uvicorn's final wait, then the
    engine's shutdown (flip_reward/server.py, flip_reward/engines/vllm_local.py)."""
    engine_stop_s = inspect.signature(VLLMEngine.shutdown).parameters["timeout_s"].default
    return shutdown_grace_s + server._FINAL_WAIT_S + engine_stop_s


# --- Dockerfiles

DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / dockerfile).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    result = run(tool("hadolint"), "--no-color", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_sloppy_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = run(tool("hadolint"), "--no-color", str(bad))
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_run_as_non_root_with_healthcheck_on_health(dockerfile):
    text = (ROOT / dockerfile).read_text()
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.MULTILINE)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_base_image_is_pinned_to_an_exact_tag_or_digest(dockerfile):
    steps = instructions(dockerfile)
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    (base,) = [a for kind, a in steps if kind == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    _, _, tag = base.partition(":")
    assert "@sha256:" in base or re.search(r"\d+\.\d+\.\d+", tag), f"{base}: not an exact version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dependencies_install_before_the_code_is_copied(dockerfile):
    """A code edit must not reinstall torch and vLLM: the layer that installs the dependencies sees
    only pyproject.toml and the constraints file; flip_reward/ and README.md are copied after it."""
    steps = instructions(dockerfile)
    deps = next(i for i, (kind, a) in enumerate(steps) if kind == "RUN" and "-c constraints/" in a and "pip" in a)
    copied_before = [a for kind, a in steps[:deps] if kind == "COPY"]
    assert copied_before and all(re.match(r"(pyproject\.toml|constraints/\S+) ", a) for a in copied_before), (
        copied_before
    )
    code = next(i for i, (kind, a) in enumerate(steps) if kind == "COPY" and a.startswith("flip_reward "))
    assert code > deps
    heavy = [
        i
        for i, (kind, a) in enumerate(steps)
        if kind == "RUN" and any("pip install" in cmd and "--no-deps" not in cmd for cmd in a.split("&&"))
    ]
    assert max(heavy) < code, "a dependency install after the code copy is redone on every edit"
    for kind, a in steps:
        if kind == "RUN" and "pip install" in a:
            assert "--mount=type=cache" in a, f"no BuildKit cache mount: {a[:80]}"
    constraints = re.search(r"-c (constraints/\S+)", steps[deps][1]).group(1)
    assert (ROOT / constraints).exists()


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_work_with_a_read_only_root(dockerfile):
    """Everything written at run time goes to a volume: HOME (vLLM, Triton, torch caches), /tmp,
    /models; the built-in model is converted at build time into a folder that is only read."""
    steps = instructions(dockerfile)
    env = " ".join(a for kind, a in steps if kind == "ENV")
    (volumes,) = [json.loads(a) for kind, a in steps if kind == "VOLUME"]
    assert {"/models", "/home/flip", "/tmp"} <= set(volumes)
    assert "HOME=/home/flip" in env and "HF_HOME=/models/" in env
    cache = re.search(r"FLIP_CACHE_DIR=(\S+)", env).group(1)
    assert any(kind == "RUN" and "prepare_builtin_llm" in a and cache in a for kind, a in steps)
    user = next(i for i, (kind, _) in enumerate(steps) if kind == "USER")
    assert not [a for kind, a in steps[user:] if kind == "RUN"], "nothing may be written as the user at build time"


def test_docker_build_context_keeps_what_the_images_copy():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "constraints", "flip_reward"):
        assert needed not in ignored


# --- Kubernetes


def render(target: str | Path) -> list[dict]:
    path = target if isinstance(target, Path) else K8S / "overlays" / target
    result = run(tool("kubectl"), "kustomize", str(path))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


@pytest.fixture(scope="module")
def with_every_component(tmp_path_factory) -> list[dict]:
    """The base with every optional component, as a user's overlay would combine them."""
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "base", overlay)],
                "components": [os.path.relpath(K8S / "components" / c, overlay) for c in COMPONENTS],
            }
        )
    )
    return render(overlay)


def by_kind(docs: list[dict], kind: str) -> dict:
    """The service's own `kind` (the fleet overlay's vLLM resources, labelled vllm, are checked in
    tests/deploy/test_fleet_overlay.py)."""
    (doc,) = [
        d for d in docs if d["kind"] == kind and d["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "vllm"
    ]
    return doc


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}
    ]


def test_overlays_and_components_are_found():
    assert {"gpu", "cpu"} <= set(OVERLAYS)
    assert {"autoscaling", "ingress", "gateway"} <= set(COMPONENTS)


def test_overlay_renders_the_service(rendered):
    _, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"flip-reward"}


def _validate_all(docs: list[dict], version: str) -> None:
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= len(docs) - 3


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(rendered, version):
    _validate_all(rendered[1], version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_component_renders_and_matches_the_schemas(with_every_component, version):
    kinds = {d["kind"] for d in with_every_component}
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "Ingress", "HTTPRoute"} <= kinds
    _validate_all(with_every_component, version)


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
    _, docs = rendered
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "flip-reward")
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model loading needs minutes"
    config = by_kind(docs, "ConfigMap")["data"]
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace_s = float(config.get("FLIP_SHUTDOWN_GRACE_S", Settings().shutdown_grace_s))
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_s(grace_s)
    assert container["image"].startswith("flip-reward")


def test_gpu_pods_roll_without_a_spare_gpu(rendered):
    _, docs = rendered
    deployment = by_kind(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    if "nvidia.com/gpu" in container.get("resources", {}).get("limits", {}):
        # A surge pod would need a GPU that a full cluster does not have: it stays Pending forever.
        assert rolling == {"maxSurge": 0, "maxUnavailable": 1}
        tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_replicas_belong_to_the_hpa_when_there_is_one(rendered):
    """With an HPA a `replicas` field resets the fleet on every apply; without one, two replicas at
    least, so that the PodDisruptionBudget's one allowed disruption leaves one serving."""
    _, docs = rendered
    deployment = by_kind(docs, "Deployment")
    hpas = [
        d
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
        and d["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "vllm"
    ]
    pdb = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    if hpas:
        (hpa,) = hpas
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"]
        assert hpa["spec"]["minReplicas"] >= 2
    else:
        assert deployment["spec"].get("replicas", 1) >= 2


def test_replicas_spread_over_nodes(rendered):
    _, docs = rendered
    deployment = by_kind(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {s["topologyKey"] for s in spread}
    assert all(s["labelSelector"]["matchLabels"].items() <= labels.items() for s in spread)


def test_every_pod_runs_non_root_on_a_read_only_root(rendered):
    _, docs = rendered
    for name, pod in pod_specs(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        mounts = {}
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, f"{name}/{container['name']}"
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
            mounts.update({m["mountPath"]: m for m in container.get("volumeMounts", [])})
        if name == "Deployment/flip-reward":
            assert {"/tmp", "/home/flip"} <= mounts.keys(), "the writable paths of a read-only root"
        elif name.startswith("Deployment/"):
            assert "/tmp" in mounts, f"{name}: /tmp must be writable on a read-only root"


def test_api_keys_come_from_a_mounted_secret_file(rendered):
    _, docs = rendered
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = by_kind(docs, "ConfigMap")["data"]
    keys_file = Path(config["FLIP_API_KEYS_FILE"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(keys_file.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == volume["secret"]["secretName"])
    assert keys_file.name in {i["path"] for i in volume["secret"]["items"]} and mount["readOnly"] is True
    assert set(secret["data"]) == {i["key"] for i in volume["secret"]["items"]}
    # No key in an environment variable, and none in git.
    env_names = {e["name"] for e in container.get("env", [])}
    assert "FLIP_API_KEYS" not in config and "FLIP_API_KEYS" not in env_names
    assert not any("secretRef" in e for e in container.get("envFrom", []))
    tracked = [
        line
        for line in (K8S / "base" / "api-keys").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert tracked == []


def test_network_policy_lets_the_service_port_in(rendered):
    _, docs = rendered
    policy = by_kind(docs, "NetworkPolicy")
    labels = by_kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]
    assert {"podSelector": {}} in rule["from"], "pods of the namespace (e.g. Prometheus sidecars, tests)"


def _wait_for_model(docs: list[dict]) -> dict:
    (wait,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["initContainers"]
    return wait


def _run_wait(wait: dict, model: Path, wait_s: float, **kw) -> subprocess.Popen:
    """The init container's own command, run here with its environment (FLIP_MODEL pointed at `model`)."""
    env = {e["name"]: e["value"] for e in wait.get("env", [])} | {"MODEL_WAIT_S": str(wait_s)}
    env |= {"FLIP_MODEL": str(model), "PATH": os.environ["PATH"]}
    return subprocess.Popen(wait["command"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_wait_for_model_gives_up_when_the_model_never_comes(tmp_path):
    """A failed prepare Job must show as the init container's error (and its restarts), not as a pod
    that waits forever."""
    wait = _wait_for_model(render("gpu"))
    budget_s = float(next(e["value"] for e in wait["env"] if e["name"] == "MODEL_WAIT_S"))
    assert 600 <= budget_s <= 4 * 3600
    process = _run_wait(wait, tmp_path / "never", wait_s=1)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "config.json not there after 1 s" in stderr and "job/flip-reward-prepare-model" in stderr


def test_wait_for_model_ends_when_the_model_is_in_place(tmp_path):
    wait = _wait_for_model(render("gpu"))
    model = tmp_path / "model"
    process = _run_wait(wait, model, wait_s=300)
    time.sleep(1)
    model.mkdir()
    (model / "config.json").write_text("{}")  # the Job's rename puts the whole folder in place at once
    stdout, stderr = process.communicate(timeout=120)  # it looks every 10 s
    assert process.returncode == 0, stderr
    assert "waiting for the prepare-model Job" in stdout


def test_every_container_has_memory_requests_and_limits(rendered):
    _, docs = rendered
    for name, pod in pod_specs(docs):
        for container in pod["containers"] + pod.get("initContainers", []):
            resources = container.get("resources", {})
            assert "memory" in resources.get("requests", {}) and "cpu" in resources.get("requests", {}), (
                f"{name}/{container['name']}: no requests, the scheduler cannot place it"
            )
            assert "memory" in resources.get("limits", {}), f"{name}/{container['name']}: no memory limit"


def test_no_pod_mounts_a_service_account_token(rendered):
    """None of them calls the Kubernetes API; a mounted token is only something to steal."""
    _, docs = rendered
    for name, pod in pod_specs(docs):
        assert pod.get("automountServiceAccountToken") is False, name


def test_a_settings_change_rolls_the_pods(tmp_path):
    """The ConfigMap is generated: its name carries a hash of the settings and the Deployment names
    it, so a changed setting changes the pod template and `kubectl apply` rolls the pods."""
    for overlay in OVERLAYS:
        docs = render(overlay)
        config = by_kind(docs, "ConfigMap")["metadata"]["name"]
        assert re.fullmatch(r"flip-reward-config-[a-z0-9]{10}", config), f"{overlay}: {config} carries no hash"
        env_from = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": config}} in env_from
    user = tmp_path / "user"
    user.mkdir()
    (user / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "overlays" / "cpu", user)],
                "configMapGenerator": [
                    {"name": "flip-reward-config", "behavior": "merge", "literals": ["FLIP_LOG_LEVEL=debug"]}
                ],
            }
        )
    )
    changed = render(user)
    new_name = by_kind(changed, "ConfigMap")["metadata"]["name"]
    assert new_name != by_kind(render("cpu"), "ConfigMap")["metadata"]["name"]
    template = by_kind(changed, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"configMapRef": {"name": new_name}} in template["envFrom"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_components_added_to_an_overlay_land_in_its_namespace(overlay, tmp_path):
    """As the overlays' comments suggest: the overlay's own kustomization with every component added
    (in a copy of deploy/k8s). Everything it renders is in the namespace, the components' HPA,
    ServiceMonitor, PrometheusRule, Secret, Ingress and HTTPRoute too."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    kustomization = copy / "overlays" / overlay / "kustomization.yaml"
    config = yaml.safe_load(kustomization.read_text())
    present = {Path(c).name for c in config.get("components", [])}
    config["components"] = config.get("components", []) + [
        f"../../components/{c}" for c in COMPONENTS if c not in present
    ]
    kustomization.write_text(yaml.safe_dump(config))
    docs = render(copy / "overlays" / overlay)
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "Ingress", "HTTPRoute"} <= {
        d["kind"] for d in docs
    }
    cluster_scoped = {"Namespace"}
    outside = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] not in cluster_scoped and d["metadata"].get("namespace") != "flip-reward"
    ]
    assert outside == []


def _selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def scrapes_per_pod_template(docs: list[dict]) -> dict[str, list[str]]:
    """Deployment -> the (ServiceMonitor, Service) pairs through which Prometheus scrapes its pods."""
    services = [d for d in docs if d["kind"] == "Service"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    out = {}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        out[deployment["metadata"]["name"]] = [
            f"{m['metadata']['name']}/{s['metadata']['name']}"
            for m in monitors
            for s in services
            if _selects(m["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
            and _selects(s["spec"]["selector"], labels)
        ]
    return out


def test_each_pod_is_scraped_once(rendered, with_every_component):
    """Two Services over the same pods, both matched by a ServiceMonitor, scrape every pod twice:
    sum by (pod) doubles and an HPA on it scales at half its target."""
    for docs in (rendered[1], with_every_component):
        for deployment, scrapes in scrapes_per_pod_template(docs).items():
            assert len(scrapes) <= 1, f"{deployment} is scraped {len(scrapes)} times: {scrapes}"
            if any(d["kind"] == "ServiceMonitor" for d in docs):
                assert len(scrapes) == 1, f"{deployment} is not scraped"


def test_paths_named_in_comments_and_docs_exist():
    """`helm install ... -f <values>` and every deploy/... file a comment or a document names."""
    texts = [p for p in (ROOT / "deploy").rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ".md", ".env"}]
    texts += [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "docker-compose.yml"]
    named = {
        (path.name, found)
        for path in texts
        for found in re.findall(r"(?:-f |\b)(deploy/[\w./-]+\.(?:ya?ml|json|env))", path.read_text())
    }
    missing = [f"{where}: {found}" for where, found in named if not (ROOT / found).exists()]
    assert named and missing == []


def test_probe_routes_exist_in_the_app():
    from flip_reward.main import create_app

    paths = {route.path for route in create_app(Settings()).routes}
    assert {"/health", "/ready", "/metrics"} <= paths


def test_config_names_are_settings(rendered):
    _, docs = rendered
    known = {f"FLIP_{name.upper()}" for name in Settings.model_fields}
    names = set(by_kind(docs, "ConfigMap")["data"])
    flip_names = {n for n in names if n.startswith("FLIP_")}
    assert flip_names and flip_names <= known, flip_names - known
    assert names - flip_names <= {"HF_HOME", "HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS"}
    env_from = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {e.get("configMapRef", {}).get("name") for e in env_from} >= {by_kind(docs, "ConfigMap")["metadata"]["name"]}


def test_gpu_overlay_serves_a_model_prepared_once_on_a_shared_volume():
    docs = render("gpu")
    config = by_kind(docs, "ConfigMap")["data"]
    assert config["HF_HUB_OFFLINE"] == "1", "serving pods download nothing"
    model = config["FLIP_MODEL"]
    job = by_kind(docs, "Job")["spec"]["template"]["spec"]
    (prepare,) = job["containers"]
    command = prepare["command"]
    assert command[:2] == ["flip-reward", "prepare-model"] and command[command.index("--out") + 1] == model
    token = next(e for e in prepare["env"] if e["name"] == "HF_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True
    pvc = by_kind(docs, "PersistentVolumeClaim")
    assert set(pvc["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models == {
        "name": "models",
        "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"], "readOnly": True},
    }
    (wait,) = pod["initContainers"]
    config_name = by_kind(docs, "ConfigMap")["metadata"]["name"]
    assert {"configMapRef": {"name": config_name}} in wait["envFrom"], "FLIP_MODEL: the folder the Job fills"
    job_volume = next(v for v in job["volumes"] if v["name"] == "models")
    assert job_volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_metric_pipeline_points_at_the_service_with_scrape_auth(with_every_component):
    docs = with_every_component
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
    # FLIP_METRICS_NEED_KEY=true: without a token the scrape gets 401 and the HPA's metric vanishes.
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == credentials["name"])
    assert credentials["key"] in secret["data"]

    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    adapter = yaml.safe_load((K8S / "components/autoscaling/prometheus-adapter.yaml").read_text())
    exposed = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert metric["pods"]["metric"]["name"] in exposed


def test_ingress_and_route_point_at_the_service(with_every_component):
    docs = with_every_component
    service = by_kind(docs, "Service")
    ingress = by_kind(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"] and backend["port"]["name"] == "http"
    route = by_kind(docs, "HTTPRoute")
    (ref,) = route["spec"]["rules"][0]["backendRefs"]
    assert (ref["name"], ref["port"]) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    # Long enough for the longest request the service allows.
    timeout = int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert timeout > Settings().max_request_timeout_s
    assert int(route["spec"]["rules"][0]["timeouts"]["request"].rstrip("s")) > Settings().max_request_timeout_s


# --- alerts

SERVICE_ALERTS = yaml.safe_load((ROOT / "deploy/prometheus/service-alerts.yml").read_text())


def test_prometheus_rule_carries_the_service_alerts(with_every_component):
    rule = by_kind(with_every_component, "PrometheusRule")
    assert rule["spec"]["groups"] == SERVICE_ALERTS["groups"]


def test_service_alerts_cover_engine_down_errors_and_queue_saturation():
    rules = [r for g in SERVICE_ALERTS["groups"] for r in g["rules"]]
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert 'up{job="flip-reward"} == 0' in exprs["FlipRewardDown"]
    assert 'status="503"' in exprs["FlipRewardEngineUnavailable"]
    assert 'status=~"5.."' in exprs["FlipRewardHighErrorRate"]
    assert "flip_rejected_total" in exprs["FlipRewardQueueSaturated"]
    threshold = float(exprs["FlipRewardQueueNearlyFull"].split(">")[-1])
    assert threshold == int(0.8 * Settings().max_queued_items)
    used = {name for e in exprs.values() for name in re.findall(r"\bflip_[a-z_]+", e)}
    assert used <= _exported_metric_names()
    assert all(r["labels"]["severity"] in {"critical", "warning"} and r["annotations"]["summary"] for r in rules)


# --- docker compose, Prometheus, Grafana

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


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
    services = COMPOSE["services"]
    gpu, cpu = services["flip-reward"], services["flip-reward-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in cpu and cpu["build"]["dockerfile"] == "Dockerfile.cpu"
    for service in (gpu, cpu):
        assert "flip-models:/models" in service["volumes"] and service["healthcheck"]["test"]
        assert "flip" in service["networks"]["default"]["aliases"]
    assert {"prometheus", "grafana"} <= services.keys()
    known = {f"FLIP_{name.upper()}" for name in Settings.model_fields}
    assert {k for s in (gpu, cpu) for k in s["environment"] if k.startswith("FLIP_")} <= known
    # `docker compose --profile cpu up` must not also start the GPU service from a default profile.
    assert "COMPOSE_PROFILES=" not in "".join(
        line for line in (ROOT / ".env").read_text().splitlines() if not line.startswith("#")
    )


def test_compose_publishes_on_loopback_unless_told_otherwise():
    published = [(name, port) for name, s in COMPOSE["services"].items() for port in s.get("ports", [])]
    assert {name for name, _ in published} == {"flip-reward", "flip-reward-cpu", "prometheus", "grafana"}
    for name, port in published:
        host = re.match(r"\$\{(\w+):-([\d.]+)\}:", str(port))
        assert host and host.group(2) == "127.0.0.1", f"{name}: {port} is published on every interface"


def test_compose_grafana_admin_comes_from_the_environment():
    env = COMPOSE["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")
    assert env["GF_SECURITY_ADMIN_USER"].startswith("${GRAFANA_ADMIN_USER")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", duration))


@pytest.mark.parametrize("name", ["flip-reward", "flip-reward-cpu"])
def test_compose_stop_grace_outlasts_the_drain(name):
    service = COMPOSE["services"][name]
    grace_s = float(service["environment"].get("FLIP_SHUTDOWN_GRACE_S", Settings().shutdown_grace_s))
    assert _seconds(service["stop_grace_period"]) > drain_s(grace_s)


@pytest.mark.parametrize("name", ["flip-reward", "flip-reward-cpu"])
def test_compose_service_runs_on_a_read_only_root_with_the_key_as_a_file(name):
    service = COMPOSE["services"][name]
    assert service["read_only"] is True and "/tmp" in service["tmpfs"]
    assert "flip-home:/home/flip" in service["volumes"]
    (secret,) = service["secrets"]
    assert service["environment"]["FLIP_API_KEYS_FILE"] == f"/run/secrets/{secret}"
    assert secret in COMPOSE["secrets"]


def test_prometheus_scrapes_the_service_with_the_metrics_key():
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "flip-reward"]
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == ["flip:8000"]
    credentials_file = Path(job["authorization"]["credentials_file"])
    assert credentials_file.parent == Path("/run/secrets")
    assert credentials_file.name in COMPOSE["services"]["prometheus"]["secrets"]
    # The rule files: the compose mount of deploy/prometheus, then the glob in prometheus.yml.
    mounts = dict(v.split(":")[:2] for v in COMPOSE["services"]["prometheus"]["volumes"] if v.startswith("./"))
    folder = Path(mounts["./deploy/prometheus"])
    (pattern,) = prometheus["rule_files"]
    loaded = {p.name for p in (ROOT / "deploy/prometheus").glob(str(Path(pattern).relative_to(folder)))}
    assert "service-alerts.yml" in loaded


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
