"""The fleet overlay (deploy/k8s/overlays/fleet): fronts in remote mode plus a vLLM fleet. Rendered
and checked against the Kubernetes schemas like the other overlays, and against what the front
needs from the fleet (flip_reward/engines/openai_remote.py)."""

from __future__ import annotations

import re
import subprocess

import kubernetes_validate
import pytest
import yaml

from flip_reward.config import Settings
from tests.deploy.test_deploy import K8S, K8S_VERSIONS, ROOT, render

FLEET = K8S / "overlays" / "fleet"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render("fleet")


def named(docs: list[dict], kind: str, name: str) -> dict:
    """The one `kind` called `name` (a generated one: with kustomize's hash suffix)."""
    pattern = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
    (doc,) = [d for d in docs if d["kind"] == kind and pattern.fullmatch(d["metadata"]["name"])]
    return doc


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_fleet_manifests_match_the_kubernetes_schemas(docs, version):
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, version, strict=True)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"flip-reward"}


def test_fronts_run_remote_on_the_cpu_image_against_the_fleets_pods(docs):
    config = named(docs, "ConfigMap", "flip-reward-config")["data"]
    known = {f"FLIP_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in config if k.startswith("FLIP_")} <= known
    assert config["FLIP_ENGINE"] == "remote" and float(config["FLIP_REMOTE_RESOLVE_S"]) > 0
    pods = named(docs, "Service", "vllm-pods")
    assert pods["spec"]["clusterIP"] == "None"  # headless: one address per pod
    port = pods["spec"]["ports"][0]["port"]
    assert config["FLIP_REMOTE_URLS"] == f"http://vllm-pods:{port}"
    front = named(docs, "Deployment", "flip-reward")["spec"]["template"]["spec"]
    (container,) = front["containers"]
    assert container["image"] == "flip-reward:cpu" and "nvidia.com/gpu" not in container["resources"]["limits"]
    key_file = config["FLIP_REMOTE_API_KEY_FILE"]
    mount = next(m for m in container["volumeMounts"] if key_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in front["volumes"] if v["name"] == mount["name"])
    # The fleet's key: one Secret you create (never in git), read by vLLM, the fronts and Prometheus.
    vllm = named(docs, "Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]
    (vllm_secret,) = [e["secretRef"]["name"] for e in vllm["envFrom"] if "secretRef" in e]
    assert volume["secret"]["secretName"] == vllm_secret and key_file.rsplit("/", 1)[1] == "VLLM_API_KEY"
    monitor = named(docs, "ServiceMonitor", "vllm")
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    assert credentials == {"name": vllm_secret, "key": "VLLM_API_KEY"}


def test_vllm_pods_serve_what_the_fronts_check_and_scale_on_waiting_requests(docs):
    config = named(docs, "ConfigMap", "flip-reward-config")["data"]
    vllm = named(docs, "Deployment", "vllm")
    (container,) = vllm["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    for flag in ("--enable-scale-out", "--enable-prompt-tokens-details", "--served-model-name=$(VLLM_MODEL)"):
        assert flag in args
    vllm_config = named(docs, "ConfigMap", "vllm-config")["data"]
    assert vllm_config["VLLM_MODEL"] == config["FLIP_MODEL"]  # the name the fronts check at start
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    secret_refs = {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
    assert secret_refs == {"vllm-api-key"}
    labels = vllm["spec"]["template"]["metadata"]["labels"]
    for service in ("vllm-pods", "vllm"):
        assert named(docs, "Service", service)["spec"]["selector"].items() <= labels.items()
    front_labels = named(docs, "Deployment", "flip-reward")["spec"]["template"]["metadata"]["labels"]
    assert not named(docs, "Service", "flip-reward")["spec"]["selector"].items() <= labels.items()
    assert front_labels != labels
    hpa = named(docs, "HorizontalPodAutoscaler", "vllm")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "vllm"
    # The HPA owns the count, and a rollout never waits for a spare GPU (as for the fronts).
    assert "replicas" not in vllm["spec"] and hpa["spec"]["minReplicas"] >= 2
    assert vllm["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    (metric,) = hpa["spec"]["metrics"]
    adapter = yaml.safe_load((FLEET / "prometheus-adapter.yaml").read_text())
    rules = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    assert metric["pods"]["metric"]["name"] in rules
    assert "vllm:num_requests_waiting" in rules[metric["pods"]["metric"]["name"]]["seriesQuery"]
    front_hpa = named(docs, "HorizontalPodAutoscaler", "flip-reward")
    assert front_hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] in rules


def test_production_stack_values_name_the_same_model_and_flags():
    values = yaml.safe_load((FLEET / "production-stack-values.yaml").read_text())
    (spec,) = values["servingEngineSpec"]["modelSpec"]
    config = yaml.safe_load((FLEET / "kustomization.yaml").read_text())
    literals = dict(lit.split("=", 1) for lit in config["configMapGenerator"][0]["literals"])
    assert spec["modelURL"] == literals["FLIP_MODEL"]
    assert f"--served-model-name={literals['FLIP_MODEL']}" in spec["vllmConfig"]["extraArgs"]
    assert values["routerSpec"]["routingLogic"] == "prefixaware"


def test_no_fleet_key_in_git(docs):
    """The key is a Secret the operator creates: nothing rendered carries it, no tracked file holds one."""
    assert not [d for d in docs if d["kind"] == "Secret" and "VLLM_API_KEY" in d.get("data", {})]
    tracked = subprocess.run(
        ["git", "ls-files", "deploy"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for path in tracked:
        text = (ROOT / path).read_text(errors="replace")
        assert not re.search(r"^\s*VLLM_API_KEY\s*=\s*\S", text, re.MULTILINE), path


def test_only_the_fronts_and_prometheus_reach_the_fleet(docs):
    vllm_labels = named(docs, "Deployment", "vllm")["spec"]["template"]["metadata"]["labels"]
    front_labels = named(docs, "Deployment", "flip-reward")["spec"]["template"]["metadata"]["labels"]
    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"]["matchLabels"].items() <= vllm_labels.items()
    ]
    assert policies, "no NetworkPolicy selects the vLLM pods: every pod of the cluster reaches them"
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"]["ingress"]:
            assert [p["port"] for p in rule["ports"]] == ["http"]
            for peer in rule["from"]:
                assert "ipBlock" not in peer, peer
                if "namespaceSelector" in peer:
                    assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                else:
                    selector = peer["podSelector"]["matchLabels"]
                    assert selector and selector.items() <= front_labels.items(), peer
                    assert not selector.items() <= vllm_labels.items()


def test_vllm_pods_outlast_the_fronts_resolve_and_carry_no_token(docs):
    """A vLLM pod going away keeps serving until every front has re-resolved the headless Service
    (FLIP_REMOTE_RESOLVE_S) and the DNS record's TTL (5 s, CoreDNS's default) has passed."""
    config = named(docs, "ConfigMap", "flip-reward-config")["data"]
    pod = named(docs, "Deployment", "vllm")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = int(command[1])
    assert pre_stop_s > float(config["FLIP_REMOTE_RESOLVE_S"]) + 5
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + 30, "vLLM's own drain after the sleep"
    assert pod["automountServiceAccountToken"] is False


def test_front_startup_probe_outlasts_its_wait_for_the_fleet(docs):
    """The front gives up on a fleet that never answers after FLIP_REMOTE_WAIT_S and exits with a
    message; the probe must not kill it in the same second (or before), hiding that message."""
    config = named(docs, "ConfigMap", "flip-reward-config")["data"]
    (container,) = named(docs, "Deployment", "flip-reward")["spec"]["template"]["spec"]["containers"]
    probe = container["startupProbe"]
    budget_s = probe["periodSeconds"] * probe["failureThreshold"]
    assert budget_s >= float(config["FLIP_REMOTE_WAIT_S"]) + 60
