"""What an item's scoring came to when it is not a plain reward, as machine-readable codes.

Two different things, kept apart on purpose:

- unscorable: the content cannot earn a reward (nothing to read). It gets the floor reward
  (FLIP_UNSCORABLE_REWARD) and the reason beside it; a trainer trains on it like any other sample.
- an item error: the service failed to score this item. `reward` is null on /reward and
  /batch_reward (the caller sees the error and its code); the trainer routes answer with an HTTP
  error instead, so no null reaches a trainer inside a 200.
"""

from __future__ import annotations

from typing import Literal

from flip_reward.scoring.parse import strip_think

UnscorableReason = Literal["empty_response", "think_only", "all_copied"]

# Per-item error codes (the `code` beside `error`, and the label of flip_item_errors_total).
ItemErrorCode = Literal[
    "empty_instruction",  # the instruction has no tokens
    "context_overflow",  # the prompt does not fit the model's context even without the response
    "engine_error",  # the engine failed on this item (a dead engine fails the whole request: 503)
    "unreadable_logprobs",  # likelihood: the engine's prompt logprobs could not be aligned to the prompt
    "no_output",  # generate: the model produced no instruction to compare
    "judge_no_score",  # judge: the model gave no 1-10 score
    "unreadable_sample",  # a trainer route could not read (instruction, response) from the sample
]


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def unscorable_reason(
    response: str, strip_reasoning: bool, after_guard: str | None = None, copied: float = 0.0
) -> UnscorableReason | None:
    """Why `response` cannot earn a reward, or None when it can be scored. `after_guard` is the
    response with the copy guard's deletions (None: the guard is off)."""
    if not response.strip():
        return "empty_response"
    if strip_reasoning and not strip_think(response):  # only <think> blocks, or cut inside one
        return "think_only"
    if after_guard is not None and copied > 0 and not _has_words(after_guard):
        return "all_copied"
    return None
