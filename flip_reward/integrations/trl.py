"""TRL: an async reward function for `GRPOTrainer(reward_funcs=...)` (and the async GRPO trainer).

    from flip_reward.integrations.trl import flip_reward, make_reward_func
    trainer = GRPOTrainer(model=..., reward_funcs=flip_reward, ...)            # $FLIP_REWARD_URL or :8000
    trainer = GRPOTrainer(model=..., reward_funcs=make_reward_func("http://gpu1:8000"), ...)

Both are picklable (a module-level coroutine function, and a functools.partial of it), which TRL's
async GRPO trainer requires: it pickles `reward_funcs` into its spawned rollout worker and refuses
closures and lambdas (trl/experimental/async_grpo/async_rollout_worker.py, `start()`).

TRL calls it with `prompts`, `completions`, `completion_ids` and every other dataset column as
keyword arguments, in one of two forms:
  plain           prompts: list[str], completions: list[str]
  conversational  prompts: list[list[message]], completions: [[{"role": "assistant", "content": ...}], ...]
The instruction is the last user message of the prompt (a templated plain prompt is read back
into turns; earlier turns are passed as context). It returns one float per completion: an empty
completion (EOS only) or one with nothing outside <think> gets the service's floor reward
(FLIP_UNSCORABLE_REWARD). When TRL passes its `log_metric` hook, the batch means of the extra
logs (flip_unscorable, flip_guard, flip_copied_fraction, ...) are logged beside TRL's own metrics.

Failures: a call that still fails after the client's retries raises, and so does a sample the
service could not score (TRL stops). With `on_failure="none"` those samples are None instead. What
TRL >= 1.6 does with a None (grpo_trainer.py `_calculate_rewards`, `_compute_advantages`): it
becomes NaN; a completion for which *every* reward function returned None is unscorable: left out
of its group's mean and std, its advantage set to 0 and its reward out of the logged mean; when
another reward function did score it, the NaN is skipped by `nansum` (FLIP counts as 0 in the sum).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from flip_reward.client import AsyncFlipClient
from flip_reward.integrations.chat_template import instruction_messages, message_text
from flip_reward.integrations.extra_logs import extra_logs
from flip_reward.integrations.rewards import as_urls, reward_of

DEFAULT_URL_ENV = "FLIP_REWARD_URL"


def _completion_text(completion: str | list[dict]) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(message_text(m) for m in completion if m.get("role", "assistant") == "assistant")


def trl_items(prompts: list, completions: list) -> list[dict]:
    """The service items for TRL's arguments (an empty completion too: it gets the floor)."""
    items: list[dict] = []
    for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        messages = instruction_messages(prompt)
        if not messages:
            raise ValueError(f"flip-reward: prompts[{index}] has no user message to take the instruction from")
        items.append({"messages": messages, "response": _completion_text(completion)})
    return items


@functools.lru_cache(maxsize=16)
def _client(urls: tuple[str, ...], options: tuple[tuple[str, Any], ...]) -> AsyncFlipClient:
    """One client per configuration and process (it is rebuilt after unpickling in another process)."""
    return AsyncFlipClient(list(urls), **dict(options))


async def flip_reward(
    prompts: list,
    completions: list,
    *,
    flip_base_url: str | list[str] | None = None,
    flip_similarity: str | None = None,
    flip_options: tuple[tuple[str, Any], ...] = (),
    **kwargs: Any,
) -> list[float | None]:
    """TRL reward function: one reward per completion."""
    urls = as_urls(flip_base_url, os.environ.get(DEFAULT_URL_ENV, "http://127.0.0.1:8000"))
    options = dict(flip_options)
    client = _client(urls, tuple(sorted({**options, "similarity": flip_similarity}.items())))
    results = await client.score(trl_items(prompts, completions))
    rewards = [reward_of(r, options.get("on_failure", "raise")) for r in results]
    log_metric = kwargs.get("log_metric")
    logs = [extra_logs(r) for r, value in zip(results, rewards, strict=True) if r is not None and value is not None]
    if callable(log_metric) and logs:
        for key in logs[0]:
            log_metric(key, sum(row[key] for row in logs) / len(logs))
    return rewards


def make_reward_func(
    base_url: str | list[str] | None = None,
    *,
    similarity: str | None = None,
    name: str = "flip_reward",
    **client_kwargs: Any,
) -> functools.partial:
    """`flip_reward` bound to a service: `base_url` defaults to $FLIP_REWARD_URL or
    http://127.0.0.1:8000; `client_kwargs` go to AsyncFlipClient (api_key, timeout, retry,
    chunk_size, max_concurrency, on_failure). A functools.partial, so it pickles; TRL names the
    reward after the function (flip_reward) whatever `name` says, unless several are in use."""
    urls = list(as_urls(base_url, os.environ.get(DEFAULT_URL_ENV, "http://127.0.0.1:8000")))
    func = functools.partial(
        flip_reward, flip_base_url=urls, flip_similarity=similarity, flip_options=tuple(sorted(client_kwargs.items()))
    )
    func.__name__ = name  # type: ignore[attr-defined]  # for code that reads __name__ directly
    return func
