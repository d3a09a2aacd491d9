"""veRL: reward functions for `custom_reward_function`, one per reward manager.

    custom_reward_function.path=<repo>/flip_reward/integrations/verl.py     # or pkg://flip_reward.integrations.verl
    custom_reward_function.name=compute_score_async   # reward loop (veRL's default); naive / dapo: compute_score
                                                      # batch manager: compute_score_batch; prime: compute_score
    +custom_reward_function.reward_kwargs.base_url=http://127.0.0.1:8000   # a URL, "a,b" or a list of URLs

veRL calls `compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)` once per
response, with only the decoded response: the instruction it answers must travel in the
dataset row. It is taken from, in this order:
  1. extra_info["instruction"]  (a string, or a message list: its last user message)
  2. extra_info["prompt"]       (veRL's chat-format prompt copied into extra_info)
  3. extra_info["question"]
  4. ground_truth               (when the dataset puts the instruction there: FLIP needs no answer)

Every manager gets a number for every sample: `{"score": float, **extra logs}` (finite numbers,
the same keys for every sample: flip_reward/integrations/extra_logs.py), so veRL's `reward_extra_info`
lists stay aligned. An empty response (EOS only) gets the floor reward (flip_unscorable=1). A
sample the service fails on raises, as does a call that fails after the client's retries (veRL
stops); with `on_failure="none"` in reward_kwargs the score is None instead, which veRL rejects.

- batch manager: `compute_score_batch(data_sources=, solution_strs=, ground_truths=, extra_infos=)`,
  one /batch_reward call (chunked) for the whole batch.
- prime manager: runs the function in a 64-process pool and does `float(result)` or
  `float(result[0])`: `compute_score` returns a dict whose `[0]` is the score, and this module,
  loaded by file path, binds the functions of the importable `flip_reward.integrations.verl`, so they pickle.
  (prime itself turns any exception into 0.0: watch flip_item_errors_total.)
- async (reward loop): at most `max_concurrency` (reward_kwargs, default 32) requests in flight per
  process, so a B×G burst does not meet the server's queue bound.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import flip_reward.client  # noqa: F401
except ImportError:  # loaded by file path from a checkout that is not installed: make `app` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flip_reward.client import AsyncFlipClient, FlipClient
from flip_reward.integrations.chat_template import instruction_messages, strip_special_tokens
from flip_reward.integrations.extra_logs import extra_logs
from flip_reward.integrations.rewards import LoopLimit, as_urls, reward_of

DEFAULT_URL_ENV = "FLIP_REWARD_URL"
INSTRUCTION_KEYS = ("instruction", "prompt", "question")
_CLIENT_OPTIONS = ("api_key", "timeout", "on_failure", "similarity")  # passed on to the client


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
    urls = as_urls(kwargs.get("base_url"), os.environ.get(DEFAULT_URL_ENV, "http://127.0.0.1:8000"))
    # The process id: a client's connections must not be shared with a forked child (prime's pool
    # forks the trainer process; two processes on one socket garble the HTTP stream).
    return (os.getpid(), urls, *(kwargs.get(k) for k in _CLIENT_OPTIONS))


def _options(key: tuple) -> tuple[list[str], dict]:
    _, urls, *values = key
    options = {k: v for k, v in zip(_CLIENT_OPTIONS, values, strict=True) if v is not None}
    return list(urls), options


@functools.lru_cache(maxsize=8)
def _sync_client(key: tuple) -> FlipClient:
    urls, options = _options(key)
    return FlipClient(urls, **options)


@functools.lru_cache(maxsize=8)
def _async_client(key: tuple) -> AsyncFlipClient:
    urls, options = _options(key)
    return AsyncFlipClient(urls, **options)  # makes a new connection pool per event loop


_LIMIT = LoopLimit(32)


def _item(solution_str: str, ground_truth: Any, extra_info: dict | None) -> dict:
    messages, _ = find_instruction(ground_truth, extra_info)
    # veRL may decode with the EOS token left in; an EOS-only response is "" (the floor reward).
    return {"messages": messages, "response": strip_special_tokens(solution_str or "")}


class VerlScore(dict):
    """{"score", **extra logs}; `[0]` is the score too, for the prime manager's `float(result[0])`."""

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__("score") if key == 0 else super().__getitem__(key)


def _result(result: dict | None, on_failure: str) -> VerlScore:
    score = reward_of(result, on_failure)
    logs = extra_logs(result) if result is not None and score is not None else {}
    return VerlScore(score=score, **logs)


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> VerlScore:
    """veRL reward function (sync: the naive, dapo and prime managers)."""
    item = _item(solution_str, ground_truth, extra_info)
    (result,) = _sync_client(_client_key(kwargs)).score([item])
    return _result(result, kwargs.get("on_failure") or "raise")


def compute_score_float(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> float | None:
    """The score alone, for managers that want a float."""
    return compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)["score"]


async def compute_score_async(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> VerlScore:
    """veRL reward function (async; veRL's reward loop awaits one per sample)."""
    item = _item(solution_str, ground_truth, extra_info)
    limit = int(kwargs.get("max_concurrency") or _LIMIT.limit)
    if limit != _LIMIT.limit:
        _LIMIT.limit = limit  # the first call's value sets the process-wide limit
    async with _LIMIT.gate():
        (result,) = await _async_client(_client_key(kwargs)).score([item])
    return _result(result, kwargs.get("on_failure") or "raise")


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict | None] | None = None,
    **kwargs: Any,
) -> list[VerlScore]:
    """veRL's `batch` reward manager: the whole batch in one (chunked) /batch_reward call."""
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    items = [_item(s, g, e) for s, g, e in zip(solution_strs, ground_truths, infos, strict=True)]
    on_failure = kwargs.get("on_failure") or "raise"
    return [_result(r, on_failure) for r in _sync_client(_client_key(kwargs)).score(items)]


if __name__ != "flip_reward.integrations.verl":
    # veRL loaded this file by path under a made-up module name that no worker process can import,
    # so these functions would not pickle (prime's process pool). Use the importable module's.
    from flip_reward.integrations import verl as _importable

    compute_score, compute_score_float = _importable.compute_score, _importable.compute_score_float
    compute_score_async, compute_score_batch = _importable.compute_score_async, _importable.compute_score_batch
    VerlScore = _importable.VerlScore  # type: ignore[misc]
