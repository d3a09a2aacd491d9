"""AReaL: a reward function for RLVRWorkflow (and the other workflows that take `reward_fn`).

    workflow_kwargs = dict(reward_fn="flip_reward.integrations.areal.reward_fn", gconfig=..., tokenizer=...)

Read at AReaL 4aef98d: RLVRWorkflow wraps the function in AsyncRewardWrapper
(areal/workflow/rlvr.py L73, L145) and calls it once per sample as
`reward_fn(prompt_str, completions_str, input_tokens, output_tokens, **data)` (L101-107), where
`prompt_str` is the decoded chat-templated prompt and `completions_str` the decoded output,
special tokens kept, and `data` the dataset row. It runs in a ProcessPoolExecutor, so the function
is module-level (pickled by reference) and opens its own connections per process.

The instruction is the last user message of `data["messages"]` (the system prompt and earlier
turns as context); without `messages`, the templated prompt is read back into turns. The
response has the template's tokens stripped (an EOS-only one is empty: the floor reward).

The 15 s trap: AsyncRewardWrapper waits 15 s per try (reward_api.py L77, not settable through
RLVRWorkflow), counted from the submission to its process pool, so the wait for a free worker
counts too; after four timed-out tries it returns 0 (L159-170), a silent 0. So this function
gives each call a budget of $FLIP_REWARD_AREAL_TIMEOUT_S (default 12 s), sent as the request's
deadline, and makes one attempt: past the budget, or on a 429/5xx, it raises, which AReaL
retries three times (L191-202) and then raises: never a made-up 0. Sizing that avoids the trap
is in docs/trainers.md ("AReaL's 15 s timeout").
"""

from __future__ import annotations

import functools
import os
from typing import Any

from flip_reward.client import FlipClient, RetryPolicy
from flip_reward.integrations.chat_template import instruction_messages, strip_special_tokens
from flip_reward.integrations.rewards import env_service, reward_of

TIMEOUT_ENV = "FLIP_REWARD_AREAL_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 12.0  # under AReaL's 15 s, with room for the wait for a pool worker


def budget_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)


@functools.lru_cache(maxsize=4)
def _client(pid: int, urls: tuple[str, ...], api_key: str | None, timeout: float) -> FlipClient:
    # one attempt: AReaL's wrapper is the retry loop, and each of its tries has its own 15 s
    return FlipClient(list(urls), api_key=api_key, timeout=timeout, retry=RetryPolicy(max_retries=0))


def flip_item(prompt: str, completions: str, data: dict[str, Any]) -> dict:
    messages = data.get("messages")
    turns = instruction_messages(messages if isinstance(messages, (str, list)) and messages else prompt or "")
    if not turns:
        raise ValueError("flip-reward: no user message in data['messages'] or the prompt to take the instruction from")
    return {"messages": turns, "response": strip_special_tokens(completions or "")}


def reward_fn(prompt: str, completions: str, prompt_ids: list[int], completion_ids: list[int], **data: Any) -> float:
    """The FLIP reward of one completion (AReaL's reward_fn signature)."""
    timeout = budget_s()
    client = _client(os.getpid(), *env_service(), timeout)
    (result,) = client.score([flip_item(prompt, completions, data)], options={"timeout_s": timeout})
    value = reward_of(result)  # raises for a sample the service could not score
    assert value is not None
    return value
