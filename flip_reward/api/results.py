"""Scorer outcomes (flip_reward/scoring/items.ItemResult) turned into what the API answers, in one place for
every route: the result object of /reward, /batch_reward, /rank and the trainer routes (to_result),
which guard decided a reward (guard_of), the reward-hacking monitor's metrics (record_results), and
a trainer route's HTTP error for an item the service failed on (fail_on_item_errors: the status
comes from the one table in flip_reward/api/errors.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flip_reward import metrics
from flip_reward.api.errors import ApiError
from flip_reward.api.schemas import Likelihood, RewardResult, Similarities, Usage
from flip_reward.scoring.items import ItemResult


def guard_of(result: ItemResult) -> str:
    """Which guard decided this item's reward: the strongest one that acted."""
    if result.unscorable is not None:
        return "unscorable"
    if result.likelihood and result.likelihood.get("keyword_stuffing"):
        return "keyword_stuffing"
    if result.copied_fraction:
        return "copies_deleted"
    return "none"


def to_result(
    result: ItemResult, details: bool, as_type: type[RewardResult] = RewardResult, **extra: Any
) -> RewardResult:
    """The item's result object; `as_type` a subclass with `extra` fields (/reward's RewardResponse),
    built in one pass."""
    return as_type(
        **extra,
        id=result.id,
        method=result.method,
        reward=result.reward,
        unscorable=result.unscorable,
        guard=guard_of(result) if result.error is None else None,
        inferred_instruction=result.inferred_instruction,
        similarities=Similarities(**result.similarities) if result.similarities else None,
        likelihood=Likelihood(**result.likelihood) if result.likelihood else None,
        judge_score=result.judge_score,
        copied_fraction=result.copied_fraction,
        parsed=result.parsed,
        truncated=result.truncated,
        usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        error=result.error,
        code=result.code,
        raw_output=result.raw_output if details else None,
    )


def record_results(results: Sequence[ItemResult], method: str, route: str) -> None:
    """The reward-hacking monitor: reward and copied-fraction distributions and guard triggers."""
    series = metrics.series
    rewards = series(metrics.REWARDS, method, route)
    copied = series(metrics.COPIED_FRACTION, method, route)
    for result in results:
        if result.error:
            series(metrics.ITEM_ERRORS, result.code or "engine_error", method, route).inc()
            continue
        if result.reward is not None:
            rewards.observe(result.reward)
        if result.copied_fraction is not None:
            copied.observe(result.copied_fraction)
        if result.unscorable is not None:
            series(metrics.UNSCORABLE, result.unscorable, method, route).inc()
        if result.copied_fraction:  # passages were deleted, whatever came of the rest
            series(metrics.GUARD_TRIGGERS, "copies_deleted", method, route).inc()
        guard = guard_of(result)
        if guard in ("keyword_stuffing", "unscorable"):
            series(metrics.GUARD_TRIGGERS, guard, method, route).inc()


def fail_on_item_errors(results: Sequence[ItemResult], field_of: Callable[[int], str]) -> None:
    """Trainer routes: an item without a reward fails the request (the first such item is named),
    with the item's code as the error type; an engine error says when to retry."""
    for index, result in enumerate(results):
        if result.error:
            code = result.code or "engine_error"
            headers = {"Retry-After": "5"} if code == "engine_error" else None
            raise ApiError(code, f"{field_of(index)}: {result.error}", field_of(index), headers=headers)
