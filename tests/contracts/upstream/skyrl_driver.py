"""Run in a virtualenv with skyrl-gym (SkyRL a956457) installed: FlipEnv registered and made by
skyrl_gym itself, init(prompt) and step(output) on a 32-thread pool as SkyRL's generator runs them.
Reads {"messages", "responses"} as JSON on stdin; prints per response reward, done and metrics, or the error."""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import skyrl_gym
from skyrl_gym.envs import register
from skyrl_gym.envs.base_text_env import BaseTextEnv

register(id="flip", entry_point="flip_reward.integrations.skyrl:FlipEnv")


def trajectory(messages: list, output: str) -> dict:
    env = skyrl_gym.make("flip", env_config={}, extras={"reward_spec": {"method": "rule"}, "max_turns": 1})
    assert isinstance(env, BaseTextEnv)
    try:
        env.init([dict(m) for m in messages])
        step = env.step(output)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    metrics = env.get_metrics()
    env.close()
    return {"reward": step["reward"], "done": step["done"], "metrics": metrics}


given = json.load(sys.stdin)
with ThreadPoolExecutor(max_workers=32) as pool:
    print(json.dumps(list(pool.map(lambda r: trajectory(given["messages"], r), given["responses"]))))
