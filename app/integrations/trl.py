"""TRL: an async reward function for `GRPOTrainer(reward_funcs=...)`.

    from app.integrations.trl import make_reward_func
    trainer = GRPOTrainer(model=..., reward_funcs=make_reward_func("http://127.0.0.1:8000"), ...)

TRL calls it with `prompts`, `completions`, `completion_ids` and every other dataset column as
keyword arguments, in one of two forms:
  plain           prompts: list[str], completions: list[str]
  conversational  prompts: list[list[message]], completions: [[{"role": "assistant", "content": ...}], ...]
The instruction is the last user message of the prompt (a templated plain prompt is read back
into turns; earlier turns are passed as context). It returns one reward per completion.

Failures: a call that still fails after the client's retries raises (TRL stops), unless the
function was made with `on_failure="none"`. A sample the service could not score (an empty
completion, for one) is None. TRL turns None into NaN and sums rewards with `nansum`, so with
FLIP as the only reward function a None counts as 0 in the advantage: pair it with another
reward function, or keep the default (raise) if that is not what you want.
"""

from __future__ import annotations

import os
from typing import Any

from app.client import AsyncFlipClient
from app.integrations.chat_template import instruction_messages, message_text

DEFAULT_URL_ENV = "FLIP_REWARD_URL"


def _completion_text(completion: str | list[dict]) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(message_text(m) for m in completion if m.get("role", "assistant") == "assistant")


def trl_items(prompts: list, completions: list) -> list[dict | None]:
    """The service items for TRL's arguments; None where a sample has no instruction or an
    empty completion (it gets a None reward without a request)."""
    items: list[dict | None] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        messages = instruction_messages(prompt)
        response = _completion_text(completion)
        items.append({"messages": messages, "response": response} if messages and response.strip() else None)
    return items


def make_reward_func(
    base_url: str | list[str] | None = None, *, similarity: str | None = None, name: str = "flip_reward",
    **client_kwargs: Any,
):
    """An async reward function for TRL. `base_url` defaults to $FLIP_REWARD_URL or
    http://127.0.0.1:8000; `client_kwargs` go to AsyncFlipClient (api_key, timeout, retry,
    chunk_size, max_concurrency, on_failure)."""
    url = base_url or os.environ.get(DEFAULT_URL_ENV, "http://127.0.0.1:8000")
    client = AsyncFlipClient(url, similarity=similarity, **client_kwargs)

    async def flip_reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        items = trl_items(prompts, completions)
        todo = [item for item in items if item is not None]
        rewards = iter(await client.rewards(todo))
        return [next(rewards) if item is not None else None for item in items]

    flip_reward.__name__ = flip_reward.__qualname__ = name  # TRL logs rewards under this name
    flip_reward.client = client
    return flip_reward
