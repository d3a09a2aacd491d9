"""The labelled series exist from start-up at 0 for every label value the service can produce, and
those values are the ones the code produces (read from its source, so a new route, guard, method,
reason or error code cannot be missed). tests/integration/test_metrics_scrape.py scrapes the running
service for what the dashboard and the alert rules read."""

from __future__ import annotations

import ast
import inspect
import itertools
from pathlib import Path

from prometheus_client import REGISTRY

from flip_reward import metrics
from flip_reward.api import errors, results

API = Path(__file__).resolve().parents[2] / "flip_reward" / "api"


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_scoring_request_routes_are_the_scoring_routes():
    routes = set()
    for path in API.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ScoringRequest":
                (route,) = [k.value for k in node.keywords if k.arg == "route"]
                assert isinstance(route, ast.Constant), f"{path.name}: route must be a literal"
                routes.add(route.value)
    assert routes == set(metrics.SCORING_ROUTES)


def test_guard_labels_are_the_guards_the_service_records():
    source = inspect.getsource(results.guard_of) + inspect.getsource(results.record_results)
    produced = {
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert set(metrics.GUARDS) <= produced
    # guard_of's answers, "none" aside (no guard acted: nothing is counted)
    returned = {
        node.value.value
        for node in ast.walk(ast.parse(inspect.getsource(results.guard_of)))
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant)
    }
    assert returned - {"none"} <= set(metrics.GUARDS)


def test_trainer_statuses_are_pre_created():
    """A trainer route answers an item error with the code as its error type (flip_reward/api/results.py)."""
    statuses = {str(errors.STATUS[code]) for code in metrics.ITEM_ERROR_CODES}
    assert statuses <= set(metrics.SCORING_STATUSES)


def test_every_label_combination_exists_at_zero_before_any_request():
    for method, route in itertools.product(metrics.METHODS, metrics.SCORING_ROUTES):
        assert _sample("flip_reward_count", method=method, route=route) is not None, (method, route)
        assert _sample("flip_copied_fraction_count", method=method, route=route) is not None
        for guard in metrics.GUARDS:
            assert _sample("flip_guard_triggers_total", guard=guard, method=method, route=route) is not None
        for reason in metrics.UNSCORABLE_REASONS:
            assert _sample("flip_unscorable_total", reason=reason, method=method, route=route) is not None
        for code in metrics.ITEM_ERROR_CODES:
            assert _sample("flip_item_errors_total", code=code, method=method, route=route) is not None
    for route, status in itertools.product(metrics.SCORING_ROUTES, metrics.SCORING_STATUSES):
        assert _sample("flip_requests_total", route=route, status=status) is not None
    assert set(metrics.METHODS) == {"generate", "likelihood", "judge"}
    assert set(metrics.UNSCORABLE_REASONS) == {"empty_response", "think_only", "all_copied"}


def test_series_is_the_labelled_child_looked_up_once():
    child = metrics.series(metrics.REWARDS, "likelihood", "/reward")
    assert child is metrics.REWARDS.labels(method="likelihood", route="/reward")
    assert metrics.series(metrics.REWARDS, "likelihood", "/reward") is child
    before = _sample("flip_reward_count", method="likelihood", route="/reward") or 0.0
    child.observe(0.5)
    assert _sample("flip_reward_count", method="likelihood", route="/reward") == before + 1
