"""veRL: `compute_score` for `custom_reward_function`.

    custom_reward_function.path=<repo>/app/integrations/verl.py
    custom_reward_function.name=compute_score          # or compute_score_async (reward loop)
    +custom_reward_function.reward_kwargs.base_url=http://127.0.0.1:8000   # optional

veRL calls `compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)` once per
response, with only the decoded response: the instruction it answers must travel in the
dataset row. It is taken from, in this order:
  1. extra_info["instruction"]  (a string, or a message list: its last user message)
  2. extra_info["prompt"]       (veRL's chat-format prompt copied into extra_info)
  3. extra_info["question"]
  4. ground_truth               (when the dataset puts the instruction there: FLIP needs no answer)
The result is {"score", "inferred_instruction", "instruction_source"}; veRL uses `score` and logs
the rest. A call that fails after the client's retries raises, unless `on_failure="none"` is
given in reward_kwargs (then `score` is None, which veRL rejects loudly rather than training on).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from app.client import AsyncFlipClient, FlipClient
from app.integrations.chat_template import instruction_messages, strip_special_tokens

DEFAULT_URL_ENV = "FLIP_REWARD_URL"
INSTRUCTION_KEYS = ("instruction", "prompt", "question")
_CLIENT_OPTIONS = ("api_key", "timeout", "on_failure", "similarity")


def find_instruction(ground_truth: Any, extra_info: dict | None) -> tuple[list[dict], str]:
    """The instruction as service `messages`, and where it was found."""
    for key in INSTRUCTION_KEYS:
        value = (extra_info or {}).get(key)
        if isinstance(value, (str, list)) and value:
            messages = instruction_messages(list(value) if not isinstance(value, str) else value)
            if messages:
                return messages, f"extra_info.{key}"
    if isinstance(ground_truth, str) and ground_truth.strip():
        messages = instruction_messages(ground_truth)
        if messages:
            return messages, "ground_truth"
    raise ValueError(
        "flip-reward: no instruction for this sample; put it in extra_info['instruction'] "
        "(or extra_info['prompt'] / extra_info['question'], or ground_truth)"
    )


def _client_key(kwargs: dict) -> tuple:
    url = kwargs.get("base_url") or os.environ.get(DEFAULT_URL_ENV, "http://127.0.0.1:8000")
    urls = tuple(url) if isinstance(url, (list, tuple)) else (url,)
    return (urls, *(kwargs.get(k) for k in _CLIENT_OPTIONS))


def _options(key: tuple) -> tuple[list[str], dict]:
    urls, *values = key
    options = {k: v for k, v in zip(_CLIENT_OPTIONS, values) if v is not None}
    return list(urls), options


@functools.lru_cache(maxsize=8)
def _sync_client(key: tuple) -> FlipClient:
    urls, options = _options(key)
    return FlipClient(urls, **options)


@functools.lru_cache(maxsize=8)
def _async_client(key: tuple) -> AsyncFlipClient:
    urls, options = _options(key)
    return AsyncFlipClient(urls, **options)  # makes a new connection pool per event loop


def _item(solution_str: str, ground_truth: Any, extra_info: dict | None) -> tuple[dict | None, str]:
    messages, source = find_instruction(ground_truth, extra_info)
    response = strip_special_tokens(solution_str)  # veRL may decode with the EOS token left in
    return ({"messages": messages, "response": response} if response else None), source


def _result(result: dict | None, source: str) -> dict:
    return {
        "score": result["reward"] if result else None,
        "inferred_instruction": (result or {}).get("inferred_instruction") or "",
        "instruction_source": source,
    }


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """veRL reward function (sync; veRL's naive/prime reward managers)."""
    item, source = _item(solution_str, ground_truth, extra_info)
    if item is None:
        return {"score": None, "inferred_instruction": "", "instruction_source": source}
    (result,) = _sync_client(_client_key(kwargs)).score([item])
    return _result(result, source)


async def compute_score_async(data_source: str, solution_str: str, ground_truth: Any,
                              extra_info: dict | None = None, **kwargs: Any) -> dict:
    """veRL reward function (async; veRL's reward loop awaits it)."""
    item, source = _item(solution_str, ground_truth, extra_info)
    if item is None:
        return {"score": None, "inferred_instruction": "", "instruction_source": source}
    (result,) = await _async_client(_client_key(kwargs)).score([item])
    return _result(result, source)
