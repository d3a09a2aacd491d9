"""verifiers v1 (and prime-rl, which trains on v1 environments): a reward function plugged by import path.

    [env.taskset.task.rewards]
    flip = { fn = "flip_reward.integrations.verifiers:reward", weight = 1.0 }

(or `--env.taskset.task.rewards.flip.fn flip_reward.integrations.verifiers:reward`). Read at verifiers
a60a606 / prime-rl 559b447:

- Arguments: Task.score calls each plugged reward with the arguments its signature names, taken
  from {task, trace, runtime} (verifiers/v1/utils/decorators.py `invoke`); `task` is the TaskData.
  The instruction is the last user message of `task.prompt` with `task.system_prompt` and earlier
  turns as context (not `task.prompt_text`, which joins every message into one); the response is
  `trace.last_reply`. An empty reply gets the service's floor reward.
- Return: the reward, a float. The extra logs (flip_unscorable, flip_guard, ...) go to
  `trace.metrics`: a returned mapping would make each of its keys a weighted reward, summed into
  `trace.reward` (verifiers/v1/task.py L228-236, trace.py L413).
- Failure: raises, never 0.0. Scoring runs under `boundary(TaskError)` (verifiers/v1/rollout.py
  L484-495): the rollout is marked failed, and prime-rl leaves failed traces out of training
  (prime_rl/orchestrator/algo/base.py L35-42).

The service: $FLIP_REWARD_URL (a URL or "a,b"), $FLIP_REWARD_API_KEY; the client retries 429/5xx
and connection errors. At most $FLIP_REWARD_MAX_CONCURRENCY (default 32) requests in flight per
process: a prime-rl orchestrator scores a whole batch of rollouts at once.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from flip_reward.client import AsyncFlipClient
from flip_reward.integrations.chat_template import instruction_messages
from flip_reward.integrations.extra_logs import extra_logs
from flip_reward.integrations.rewards import LoopLimit, env_service, reward_of

_LIMIT = LoopLimit(int(os.environ.get("FLIP_REWARD_MAX_CONCURRENCY") or 32))


@functools.lru_cache(maxsize=4)
def _client(pid: int, urls: tuple[str, ...], api_key: str | None) -> AsyncFlipClient:
    # keyed by process id: a forked environment worker must not share its parent's connections
    return AsyncFlipClient(list(urls), api_key=api_key)


def _as_dict(message: Any) -> dict:
    return message.model_dump() if hasattr(message, "model_dump") else dict(message)


def flip_item(task: Any, trace: Any) -> dict:
    """The /batch_reward item for one verifiers task and trace."""
    prompt = task.prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [_as_dict(m) for m in prompt or []]
    if getattr(task, "system_prompt", None):
        messages.insert(0, {"role": "system", "content": task.system_prompt})
    turns = instruction_messages(messages)
    if not turns:
        raise ValueError("flip-reward: task.prompt has no user message to take the instruction from")
    return {"messages": turns, "response": trace.last_reply or ""}


async def reward(task: Any, trace: Any) -> float:
    """The FLIP reward of the trace's last reply; its figures are recorded in trace.metrics."""
    item = flip_item(task, trace)
    async with _LIMIT.gate():
        (result,) = await _client(os.getpid(), *env_service()).score([item])
    value = reward_of(result)  # raises for a sample the service could not score
    assert value is not None and result is not None
    record = getattr(trace, "record_metrics", None)
    if callable(record):
        record(extra_logs(result))
    return value
