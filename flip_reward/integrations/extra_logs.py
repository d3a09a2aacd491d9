"""Per-sample figures a trainer can turn into tensors: finite numbers only, the same keys for
every sample of a method (OpenRLHF `extra_logs`, veRL `reward_extra_info`, slime, TRL `log_metric`).

Built from a /batch_reward result dict, so the adapters (which talk HTTP) and the server's own
trainer routes give the same figures. Keys:

  every method  flip_unscorable       1 when the response got the floor reward (nothing to score), else 0
                flip_guard            0 none, 1 copies deleted, 2 keyword stuffing (reward 0), 3 unscorable
                flip_copied_fraction  share of the response copied from the instruction (0 with the guard off)
                flip_truncated        1 when the response or context was cut to fit the model
  generate      flip_f1, flip_embedding, flip_parsed
  likelihood    flip_conditional      mean log-probability per instruction token given the response
  judge         flip_judge_score      the 1-10 score

A method figure of an unscorable sample (nothing was scored) is 0.0; flip_unscorable marks it.
Only needs the standard library: trainers import it without the server's dependencies.
"""

from __future__ import annotations

import math
from typing import Any

GUARD_CODES = {"none": 0, "copies_deleted": 1, "keyword_stuffing": 2, "unscorable": 3}

METHOD_KEYS = {
    "generate": ("flip_f1", "flip_embedding", "flip_parsed"),
    "likelihood": ("flip_conditional",),
    "judge": ("flip_judge_score",),
}
COMMON_KEYS = ("flip_unscorable", "flip_guard", "flip_copied_fraction", "flip_truncated")


def keys_for(method: str) -> tuple[str, ...]:
    return COMMON_KEYS + METHOD_KEYS.get(method, ())


def _finite(value: Any) -> float:
    number = float(value) if value is not None else 0.0
    return number if math.isfinite(number) else 0.0


def extra_logs(result: dict) -> dict[str, float]:
    """The figures of one scored sample (a result dict with a reward; never one with an error)."""
    method = result.get("method") or "likelihood"
    similarities = result.get("similarities") or {}
    likelihood = result.get("likelihood") or {}
    values = {
        "flip_unscorable": 1.0 if result.get("unscorable") else 0.0,
        "flip_guard": float(GUARD_CODES.get(result.get("guard") or "none", 0)),
        "flip_copied_fraction": _finite(result.get("copied_fraction")),
        "flip_truncated": 1.0 if result.get("truncated") else 0.0,
        "flip_f1": _finite(similarities.get("f1")),
        "flip_embedding": _finite(similarities.get("embedding")),
        "flip_parsed": 1.0 if result.get("parsed") else 0.0,
        "flip_conditional": _finite(likelihood.get("conditional")),
        "flip_judge_score": _finite(result.get("judge_score")),
    }
    return {key: values[key] for key in keys_for(method)}


def column_logs(results: list[dict], method: str) -> dict[str, list[float]]:
    """extra_logs of many samples as one list per key (OpenRLHF's shape)."""
    rows = [extra_logs(r) for r in results]
    return {key: [row[key] for row in rows] for key in keys_for(method)}
