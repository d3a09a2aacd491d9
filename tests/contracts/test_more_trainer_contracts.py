"""verifiers v1 / prime-rl, NeMo Gym + NeMo RL, SkyRL and AReaL: what each one's current upstream
code does with our reply, step by step, over a real socket (as tests/contracts/test_trainer_contracts.py
does for the first five). Each helper mirrors (does not copy) the upstream code named in its
docstring, at these commits (read 2026-12-04):

  PrimeIntellect-ai/verifiers a60a606ecc4d309247edf9ff92c3eabca362781f
  PrimeIntellect-ai/prime-rl  559b44772e471d1538537b8805cc77f3824a5e64
  NVIDIA-NeMo/Gym             07d6b0d07b22fcf530b4c211dae2ee23100428e4
  NVIDIA-NeMo/RL              7ea279abfbeb698b092856d0dab61e7cf39bc909
  NovaSky-AI/SkyRL            a9564572eb8e91076be43c1bd5e4615e3de17265
  inclusionAI/AReaL           4aef98d8d818af55b43621aaadba047ae10f4e77

The same call paths run on the real upstream packages where they install on a CPU machine
(verifiers, skyrl-gym): tests/contracts/test_upstream_code.py.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import multiprocessing
import socket
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from types import SimpleNamespace

import aiohttp
import pytest
import torch

from flip_reward.client import AsyncFlipClient, FlipClient, RetryPolicy
from tests.contracts.conftest import GROUP, INSTRUCTION, UNSCORABLE, batch_rewards, run

CHATML = "<|im_start|>system\nBe helpful.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
MESSAGES = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": INSTRUCTION}]


@pytest.fixture(scope="module")
def expected(live):
    """/batch_reward's answer for the group, with the system prompt as context (what every new
    adapter and route must agree with)."""
    rewards = batch_rewards(live, [{"messages": MESSAGES, "response": r} for r in GROUP])
    assert [rewards[i] for i in UNSCORABLE] == [0.0] * len(UNSCORABLE)
    return rewards


@pytest.fixture
def service_env(live, monkeypatch):
    monkeypatch.setenv("FLIP_REWARD_URL", live.url)
    return live


def assert_group(got: list[float], expected: list[float]) -> None:
    assert len(got) == len(GROUP) and all(isinstance(v, float) and math.isfinite(v) for v in got), got
    assert got == pytest.approx(expected, abs=1e-6)


def no_retry_async(pid, urls, api_key):  # a failure test needs no backoff: the client's retries are tested elsewhere
    return AsyncFlipClient(list(urls), api_key=api_key, retry=RetryPolicy(max_retries=0))


def no_retry_sync(pid, urls, api_key):
    return FlipClient(list(urls), api_key=api_key, retry=RetryPolicy(max_retries=0))


# --- verifiers v1 / prime-rl


class Trace:
    """The parts of verifiers.v1.Trace a reward touches (verifiers/v1/trace.py L386-414, L522-563)."""

    def __init__(self, reply: str) -> None:
        self.reply, self.rewards, self.metrics, self.ok = reply, {}, {}, True

    @property
    def last_reply(self) -> str:  # L522-525: the last assistant message, stripped
        return self.reply.strip()

    @property
    def reward(self) -> float:  # L413-414: the weighted sum
        return sum(score * weight for score, weight in self.rewards.values())

    @property
    def has_error(self) -> bool:
        return not self.ok

    def record_metrics(self, values: Mapping[str, float]) -> None:  # L557-559
        self.metrics.update({k: float(v) for k, v in values.items()})

    def record_reward(self, name: str, value: float, weight: float = 1.0) -> None:  # L561-563
        self.rewards[name] = (float(value), float(weight))


def verifiers_invoke(fn, available: dict):
    """verifiers/v1/utils/decorators.py L29-38 `invoke`: the arguments the signature names."""
    return fn(**{name: available[name] for name in inspect.signature(fn).parameters if name in available})


async def verifiers_score(task, trace: Trace, rewards: dict) -> None:
    """verifiers/v1/task.py L196-236 Task.score (no runtime): gather every plugged reward; a Mapping
    result records each key as a weighted reward, a number records it under the plugged name."""
    available = {"task": task, "trace": trace}
    results = await asyncio.gather(*(verifiers_invoke(fn, available) for fn, _ in rewards.values()))
    for (name, (_, weight)), result in zip(rewards.items(), results, strict=True):
        items = result.items() if isinstance(result, Mapping) else [(name, result)]
        for key, value in items:
            trace.record_reward(key, value, weight)


async def verifiers_rollout_close(task, trace: Trace, rewards: dict) -> Trace:
    """verifiers/v1/rollout.py L484-495: scoring under boundary(TaskError); any exception fails the
    rollout (trace.ok = False)."""
    try:
        await verifiers_score(task, trace, rewards)
    except Exception:
        trace.ok = False
    return trace


def prime_rl_trainable(traces: list[Trace]) -> list[Trace]:
    """prime_rl/orchestrator/algo/base.py L35-42 iter_trainable_traces: traces with an error are skipped."""
    return [t for t in traces if not t.has_error]


def verifiers_task(prompt=None, system_prompt="Be helpful."):
    return SimpleNamespace(prompt=prompt or [{"role": "user", "content": INSTRUCTION}], system_prompt=system_prompt)


def test_verifiers_reward_scores_a_grpo_group_by_import_path(service_env, expected):
    from flip_reward.integrations import verifiers

    assert inspect.iscoroutinefunction(verifiers.reward)  # gathered, so it must be awaitable
    rewards = {"flip": (verifiers.reward, 1.0)}

    async def rollouts():
        return await asyncio.gather(*(verifiers_rollout_close(verifiers_task(), Trace(r), rewards) for r in GROUP))

    traces = run(rollouts())
    assert prime_rl_trainable(traces) == traces
    assert_group([t.reward for t in traces], expected)
    assert all(set(t.rewards) == {"flip"} for t in traces), "the extra logs must not become rewards"
    assert [t.metrics["flip_unscorable"] for t in traces] == [float(i in UNSCORABLE) for i in range(len(GROUP))]
    assert len({frozenset(t.metrics) for t in traces}) == 1


def test_verifiers_instruction_is_the_last_user_message_not_prompt_text(service_env):
    from flip_reward.integrations.verifiers import flip_item

    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    task = verifiers_task(prompt + [{"role": "user", "content": [{"type": "text", "text": INSTRUCTION}]}])
    item = flip_item(task, Trace(GROUP[0]))
    assert item["messages"][0] == {"role": "system", "content": "Be helpful."}
    assert item["messages"][-1] == {"role": "user", "content": INSTRUCTION}
    assert len(item["messages"]) == 4 and item["response"] == GROUP[0]
    with pytest.raises(ValueError, match="no user message"):
        flip_item(verifiers_task([{"role": "assistant", "content": "x"}], None), Trace("y"))


def test_a_mapping_of_extra_logs_would_be_summed_into_the_verifiers_reward():
    async def with_logs(trace):
        return {"flip": 0.5, "flip_unscorable": 1.0, "flip_guard": 3.0}

    traced = Trace("x")
    run(verifiers_score(verifiers_task(), traced, {"flip": (with_logs, 1.0)}))
    assert traced.reward == 4.5  # why the adapter returns a float and records the logs as metrics


def test_verifiers_failure_fails_the_rollout_and_prime_rl_drops_it(unavailable_url, monkeypatch):
    from flip_reward.integrations import verifiers

    monkeypatch.setenv("FLIP_REWARD_URL", unavailable_url)
    monkeypatch.setattr(verifiers, "_client", no_retry_async)
    task, rewards = verifiers_task(), {"flip": (verifiers.reward, 1.0)}
    trace = run(verifiers_rollout_close(task, Trace(GROUP[0]), rewards))
    assert trace.has_error and trace.rewards == {} and prime_rl_trainable([trace]) == []


# --- NeMo Gym (+ NeMo RL, + verifiers' nemo_gym taskset)


def gym_row(text: str | None) -> tuple[dict, dict]:
    row = {"responses_create_params": {"input": MESSAGES}, "agent_ref": {"name": "flip_reward_simple_agent"}}
    output = (
        []
        if text is None
        else [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
    )
    return row, {"id": "resp", "object": "response", "output": output}


async def gym_simple_agent_run(url: str, row: dict, model_response: dict) -> dict:
    """responses_api_agents/simple_agent/app.py L278-347 `run`: POST /seed_session and raise_for_status,
    (the policy's /v1/responses), then POST /verify with the row | {"response": ...}, raise_for_status,
    and the JSON back (over Gym's aiohttp client, no timeout: nemo_gym/server_utils.py L160, L207-260)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout()) as session:
        async with session.post(url + "/seed_session", json=row) as seeded:
            seeded.raise_for_status()
        async with session.post(url + "/verify", json=row | {"response": model_response}) as verified:
            verified.raise_for_status()
            return await verified.json()


def nemo_rl_total_reward(results: list[dict]) -> torch.Tensor:
    """nemo_rl/experience/rollouts.py L2784 (total_reward from full_result["reward"]) and L2835-2856;
    nemo_rl/environments/nemo_gym.py L1037-1105: with reward_components, reward must be their sum."""
    total = torch.tensor([r["reward"] for r in results])
    for result in results:
        components = result.get("reward_components")
        if components and not math.isclose(float(result["reward"]), sum(components.values()), abs_tol=1e-6):
            raise ValueError("reward != sum(reward_components)")
    return total


def verifiers_nemo_gym_reward(result: dict, trace: Trace) -> float:
    """verifiers/v1/tasksets/nemo_gym/taskset.py L72-89: pop the reward, every other numeric field a metric."""
    result = dict(result)
    reward = result.pop("reward")
    del result["responses_create_params"], result["response"]
    for key, value in result.items():
        if isinstance(value, (bool, int, float)):
            trace.metrics[key] = float(value)
    return float(reward)


def test_nemo_gym_verify_scores_a_grpo_group(live, expected):
    rows = [gym_row(r) for r in GROUP[:3]] + [gym_row(None)] + [gym_row(r) for r in GROUP[4:]]

    async def rollouts():
        return await asyncio.gather(*(gym_simple_agent_run(live.url, row, resp) for row, resp in rows))

    results = run(rollouts())
    assert_group(nemo_rl_total_reward(results).tolist(), expected)
    assert all(r["agent_ref"] == {"name": "flip_reward_simple_agent"} for r in results)  # the row comes back
    assert [results[i]["flip_unscorable_reason"] for i in UNSCORABLE] == list(UNSCORABLE.values())
    traces = [Trace("") for _ in results]
    assert_group([verifiers_nemo_gym_reward(r, t) for r, t in zip(results, traces, strict=True)], expected)
    assert all(t.metrics["flip_unscorable"] in (0.0, 1.0) for t in traces)
    assert len({frozenset(t.metrics) for t in traces}) == 1


def test_extra_logs_in_reward_components_would_fail_nemo_rl():
    with pytest.raises(ValueError):
        nemo_rl_total_reward([{"reward": 0.5, "reward_components": {"flip": 0.5, "flip_unscorable": 1.0}}])


def test_nemo_gym_failure_is_an_infra_status_nemo_rl_retries(unavailable_url):
    """nemo_rl/environments/nemo_gym.py L130-161, L697-709: an HTTP failure with a status >= 500
    (or a retriable 4xx) becomes GymTransportError, which the driver retries (failures.py L192-202)."""
    row, response = gym_row(GROUP[0])
    with pytest.raises(aiohttp.ClientResponseError) as failed:
        run(gym_simple_agent_run(unavailable_url, row, response))
    assert failed.value.status >= 500


# --- SkyRL


async def skyrl_agent_loop(env_cls, executor: ThreadPoolExecutor, prompt: list[dict], output: str, extras: dict):
    """skyrl/train/generators/skyrl_gym_generator.py L333-344 (make the env, init(prompt) on the env
    pool), L446-451 (step(output) on the pool; reward, done), L493/L519 (get_metrics when done)."""
    loop = asyncio.get_running_loop()
    env = env_cls(env_config={}, extras={**extras, "max_turns": 1})
    chat_history, _ = await loop.run_in_executor(executor, env.init, [dict(m) for m in prompt])
    assert chat_history == prompt
    step = await loop.run_in_executor(executor, env.step, output)
    assert step["done"] and step["observations"] == []
    metrics = env.get_metrics()
    await loop.run_in_executor(executor, env.close)
    return step["reward"], metrics


def test_skyrl_env_scores_a_grpo_group_on_the_env_thread_pool(service_env, expected):
    from flip_reward.integrations.skyrl import FlipEnv

    extras = {"reward_spec": {"method": "rule", "ground_truth": None}}

    async def generate():
        with ThreadPoolExecutor(max_workers=32, thread_name_prefix="skyrl-gym-env-") as pool:
            return await asyncio.gather(
                *(skyrl_agent_loop(FlipEnv, pool, MESSAGES, r + "<|im_end|>", extras) for r in GROUP)
            )

    results = run(generate())
    assert_group([reward for reward, _ in results], expected)
    assert len({frozenset(m) for _, m in results}) == 1
    assert [m["flip_unscorable"] for _, m in results] == [float(i in UNSCORABLE) for i in range(len(GROUP))]


def test_skyrl_failure_fails_the_generation(unavailable_url, monkeypatch):
    from flip_reward.integrations import skyrl

    monkeypatch.setenv("FLIP_REWARD_URL", unavailable_url)
    monkeypatch.setattr(skyrl, "_client", no_retry_sync)

    async def generate():
        with ThreadPoolExecutor(max_workers=2) as pool:
            return await skyrl_agent_loop(skyrl.FlipEnv, pool, MESSAGES, GROUP[0], {})

    with pytest.raises(Exception, match=r"flip-reward|HTTP 503"):  # no except around env.step (L326-605)
        run(generate())


# --- AReaL


class AsyncRewardWrapper:
    """areal/api/reward_api.py L63-202: the function runs in a ProcessPoolExecutor; each try waits
    `timeout_seconds` (15) from submission; a timeout is retried and after the last try gives 0; any
    other exception is retried `max_retries` (3) times, then raised."""

    def __init__(self, reward_fn, pool: ProcessPoolExecutor, timeout_seconds: float = 15, max_retries: int = 3):
        self.reward_fn, self.pool, self.timeout_seconds, self.max_retries = (
            reward_fn,
            pool,
            timeout_seconds,
            max_retries,
        )

    async def __call__(self, *args, **kwargs) -> float:
        loop = asyncio.get_event_loop()
        for attempt in range(self.max_retries + 1):
            try:
                future = loop.run_in_executor(self.pool, partial(self.reward_fn, *args, **kwargs))
                return await asyncio.wait_for(future, timeout=self.timeout_seconds)
            except TimeoutError:
                if attempt < self.max_retries:
                    continue
                return 0
            except Exception:
                if attempt < self.max_retries:
                    continue
                raise
        raise AssertionError("unreachable")


def areal_rlvr_rewards(reward_fn, pool, completions: list[str]) -> list[float]:
    """areal/workflow/rlvr.py L73, L101-107: reward_fn(prompt_str, completions_str, input_tokens,
    output_tokens, **data); the prompt decoded with its template, the completion with its EOS."""
    wrapper = AsyncRewardWrapper(reward_fn, pool)
    data = {"messages": MESSAGES, "answer": "unused"}

    async def episodes():
        return await asyncio.gather(*(wrapper(CHATML.format(INSTRUCTION), c, [1, 2], [3], **data) for c in completions))

    return run(episodes())


def test_areal_reward_fn_scores_a_grpo_group_in_a_process_pool(service_env, expected):
    from flip_reward.integrations.areal import reward_fn

    # ProcessPoolExecutor's default start on Linux (Python <= 3.13) forks the rollout process
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("fork")) as pool:
        rewards = areal_rlvr_rewards(reward_fn, pool, [r + "<|im_end|>" for r in GROUP])
    assert_group(rewards, expected)


def test_areal_instruction_without_messages_comes_from_the_templated_prompt(service_env):
    from flip_reward.integrations.areal import flip_item

    item = flip_item(CHATML.format(INSTRUCTION), GROUP[0] + "<|im_end|>", {})
    assert item == {"messages": MESSAGES, "response": GROUP[0]}


def test_areal_a_stalled_service_raises_within_the_budget_never_0(monkeypatch):
    from flip_reward.integrations.areal import reward_fn

    with socket.socket() as silent:  # accepts connections, never answers: a stalled service
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("FLIP_REWARD_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("FLIP_REWARD_AREAL_TIMEOUT_S", "0.5")
        started = time.monotonic()
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
            with pytest.raises(Exception, match="Timeout"):
                areal_rlvr_rewards(reward_fn, pool, [GROUP[0]])
    assert time.monotonic() - started < 15  # 4 tries of 0.5 s: raised long before AReaL's own 15 s would give 0


# --- Axolotl (axolotl-ai-cloud/axolotl 067b021c8b87a9e5e380b9173c704cf7340e30f5, pins trl==1.8.0)


def test_axolotl_loads_the_trl_reward_function_by_its_dotted_path(service_env, expected):
    """src/axolotl/core/trainers/grpo/__init__.py L248-275 get_reward_func: import the module of
    `trl.reward_funcs[i]`, getattr the name, require at least two parameters; the function then goes
    to TRL's GRPOTrainer as is (L213-217)."""
    import importlib

    fqn = "flip_reward.integrations.trl.flip_reward"
    module = importlib.import_module(".".join(fqn.split(".")[:-1]))
    reward_func = getattr(module, fqn.split(".")[-1])
    assert len(inspect.signature(reward_func).parameters) >= 2
    got = run(reward_func(prompts=[MESSAGES] * len(GROUP), completions=GROUP, completion_ids=[[1]] * len(GROUP)))
    assert_group(got, expected)
