"""The reward-hacking monitor's deployment files: the Prometheus alert rules and the Grafana
guard panels query only metrics the service exports, and Prometheus loads the rules."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import yaml

from tests.deploy.test_deploy import _exported_metric_names

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/prometheus/alerts.yml"


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_prometheus_loads_the_alert_rules():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    # mounted under /etc/prometheus/ next to prometheus.yml (docker-compose.yml)
    assert any(
        fnmatch.fnmatch(f"/etc/prometheus/{ALERTS.name}", pattern) or pattern == ALERTS.name
        for pattern in config["rule_files"]
    )


def test_alert_rules_use_exported_metrics_and_defined_recording_rules():
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    used = {name for r in rules for name in re.findall(r"\bflip_[a-z_]+", r["expr"])}
    assert not used - _exported_metric_names(), used - _exported_metric_names()
    referenced = {name for r in rules for name in re.findall(r"\bflip:[a-z_:0-9]+", r["expr"])}
    assert referenced <= recorded, referenced - recorded
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert "FlipGuardRateRising" in alerts and "flip:guard_rate" in alerts["FlipGuardRateRising"]["expr"]
    for alert in alerts.values():
        assert alert["for"] and alert["labels"]["severity"] and alert["annotations"]["summary"]


def test_dashboard_has_the_guard_panels():
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/flip-reward.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "flip_guard_triggers_total",
        "flip_unscorable_total",
        "flip_copied_fraction_bucket",
        "flip_reward_bucket",
    ):
        assert metric in exprs
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    assert "reward hacking" in titles and "guard triggers" in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
