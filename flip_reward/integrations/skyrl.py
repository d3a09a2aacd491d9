"""SkyRL: a single-turn text environment whose reward is FLIP's.

Register it inside SkyRL's entrypoint task (where its docs register any custom environment),
and name it in the dataset rows (`"env_class": "flip"`) or for every row with
`environment.env_class=flip`:

    from skyrl_gym.envs import register
    register(id="flip", entry_point="flip_reward.integrations.skyrl:FlipEnv")

Read at SkyRL a956457: the generator makes one environment per trajectory
(`skyrl_gym.make(env_class, env_config=, extras=)`), calls `init(prompt)` with the row's chat
prompt, then `step(output)` with the decoded generation, both on a thread pool
(`skyrl_gym.max_env_workers`, 32) (skyrl/train/generators/skyrl_gym_generator.py L337-344,
L446-451); `get_metrics()` once the trajectory is done (L493, L519).

The instruction is the prompt's last user message (the system prompt and earlier turns are
context); the response is the generation with template tokens stripped (an EOS-only one is
empty and gets the floor reward). `step` returns the reward with done=True; the extra logs are
in `metadata` and `get_metrics()`, which SkyRL averages over episodes. A sample the service
cannot score raises, which fails the generation (no except around `step`): never a made-up 0.
The service: $FLIP_REWARD_URL and $FLIP_REWARD_API_KEY.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from flip_reward.client import FlipClient
from flip_reward.integrations.chat_template import instruction_messages, strip_special_tokens
from flip_reward.integrations.extra_logs import extra_logs
from flip_reward.integrations.rewards import env_service, reward_of

try:  # the real base class when skyrl-gym is installed, so that skyrl_gym.make accepts the env
    from skyrl_gym.envs.base_text_env import BaseTextEnv
except ImportError:  # skyrl-gym absent: the same interface, for use and tests without it

    class BaseTextEnv:  # type: ignore[no-redef]
        def __init__(self) -> None:
            self.turns, self.max_turns = 0, 1

        def close(self) -> None:
            pass


@functools.lru_cache(maxsize=4)
def _client(pid: int, urls: tuple[str, ...], api_key: str | None) -> FlipClient:
    # one per process (httpx's client is thread-safe: shared by SkyRL's env threads); a forked
    # worker gets its own connections
    return FlipClient(list(urls), api_key=api_key)


class FlipEnv(BaseTextEnv):
    """One step: score the generation against the prompt's instruction, then done."""

    def __init__(self, env_config: Any = None, extras: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.extras = extras or {}
        self.messages: list[dict[str, str]] | None = None
        self.metrics: dict[str, float] = {}

    def init(self, prompt: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        self.messages = instruction_messages(prompt)
        if not self.messages:
            raise ValueError("flip-reward: the prompt has no user message to take the instruction from")
        return prompt, {}

    def step(self, action: str) -> dict[str, Any]:
        if self.messages is None:
            raise RuntimeError("flip-reward: step() before init(prompt)")
        self.turns += 1
        item = {"messages": self.messages, "response": strip_special_tokens(action or "")}
        (result,) = _client(os.getpid(), *env_service()).score([item])
        reward = reward_of(result)  # raises for a sample the service could not score
        assert reward is not None and result is not None
        self.metrics = extra_logs(result)
        return {"observations": [], "reward": reward, "done": True, "metadata": {"flip": dict(self.metrics)}}

    def get_metrics(self) -> dict[str, Any]:
        return dict(self.metrics)
