"""What the Grafana dashboard and the alert rules read is there from the start: the running
service's /metrics, scraped the moment it turned ready (before any test sent a request), holds every
metric each panel and rule reads, and every label combination of it the service can produce, at 0.
A labelled series born at its first increment makes rate()/increase() miss that increment, so the
first guard triggers after a start would never reach the reward-hacking alert."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from flip_reward import metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/flip-reward.json"
RULE_FILES = sorted((ROOT / "deploy/prometheus").glob("*alerts.yml"))
# Remote engine mode only (FLIP_ENGINE=remote): one series per fleet URL, which the session's local
# service does not have. Checked by name only: the service exports them (tests/deploy).
REMOTE_ONLY = {"flip_remote_requests_total"}
# The values each label can take: the ones the service produces (tests/unit/test_metrics.py ties
# them to the code).
DOMAINS = {
    "route": metrics.SCORING_ROUTES,
    "status": metrics.SCORING_STATUSES,
    "method": metrics.METHODS,
    "guard": metrics.GUARDS,
    "reason": metrics.UNSCORABLE_REASONS,
    "code": metrics.ITEM_ERROR_CODES,
}
SELECTOR = re.compile(r"\b(flip_[a-z_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _exprs() -> dict[str, str]:
    """Every PromQL expression, named by where it is read."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {
        f"panel {p['title']!r} #{i}": t["expr"] for p in dashboard["panels"] for i, t in enumerate(p.get("targets", []))
    }
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                exprs[f"{path.name} {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    return exprs


def _matches(matchers: list[tuple[str, str, str]], labels: dict[str, str]) -> bool:
    for name, op, value in matchers:
        got = labels.get(name, "")
        full = re.fullmatch(value, got) is not None  # PromQL regexes are anchored
        if (op == "=" and got != value) or (op == "!=" and got == value):
            return False
        if (op == "=~" and not full) or (op == "!~" and full):
            return False
    return True


def _series(text: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample.labels)
    return out


def test_every_metric_and_label_combination_read_is_there_from_the_start(server):
    assert server.startup_metrics, "the fixture scraped /metrics when the service turned ready"
    scraped = _series(server.startup_metrics)
    missing, checked = [], 0
    for where, expr in _exprs().items():
        for name, body in SELECTOR.findall(expr):
            if name in REMOTE_ONLY:
                continue
            matchers = MATCHER.findall(body)
            present = [labels for labels in scraped.get(name, []) if _matches(matchers, labels)]
            if not present:
                missing.append(f"{where}: {name}{{{body}}}")
                continue
            # every combination of the labels this metric carries, within the selector's matchers
            names = sorted(set().union(*present) & DOMAINS.keys())
            for values in itertools.product(*(DOMAINS[n] for n in names)):
                wanted = dict(zip(names, values, strict=True))
                if not _matches(matchers, wanted):
                    continue
                checked += 1
                if not any(wanted.items() <= labels.items() for labels in present):
                    missing.append(f"{where}: {name}{wanted}")
    assert missing == [], f"{len(missing)} read but not exported at start-up:\n" + "\n".join(sorted(set(missing))[:40])
    # the reward-hacking monitor's counters, every guard x method x route among them
    assert checked >= len(metrics.GUARDS) * len(metrics.METHODS) * len(metrics.SCORING_ROUTES)


def test_the_selectors_are_read_as_prometheus_reads_them():
    """The matcher logic above on the rules' own selectors: the 503 rule reads the scoring routes'
    503s, not /ready's."""
    rule = next(e for w, e in _exprs().items() if w.endswith("FlipRewardEngineUnavailable"))
    ((_, body),) = [m for m in SELECTOR.findall(rule) if m[0] == "flip_requests_total"]
    matchers = MATCHER.findall(body)
    assert _matches(matchers, {"route": "/batch_reward", "status": "503"})
    assert not _matches(matchers, {"route": "/ready", "status": "503"})
    assert not _matches(matchers, {"route": "/reward", "status": "200"})
