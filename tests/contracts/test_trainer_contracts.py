"""What each trainer's current upstream code does with our reply, step by step, over a real socket.

Each test mirrors (does not copy) the trainer's call path at the commit named, and fails where
that code would crash: a null reward or a null in the extra logs, a dict where a float is
needed, a function that does not pickle. Upstream commits read (2026-12-01):

  OpenRLHF/OpenRLHF     3c3be6234e0cb353e76bb8019947db9dfe99fca7
  THUDM/slime           624b824a898ab0ec1fcb4d373004c7f3852bf515
  volcengine/verl       b178a3cd56f58b2d502255daba591e92833930a7
  allenai/open-instruct e6c3044aa6201c8bfa4573c1b03142af599e730d
  huggingface/trl       f2cd57710ae345ea6428ae95363267fcf38a3dc8 (and the installed trl, whose code is called)
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import math
import multiprocessing
import pickle
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pytest
import torch

from tests.contracts.conftest import GROUP, INSTRUCTION, UNSCORABLE, batch_rewards, run

ROOT = Path(__file__).resolve().parents[2]
CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def expected(live):
    """/batch_reward's answer for the group: what every route and adapter must agree with."""
    rewards = batch_rewards(live, [{"prompt": INSTRUCTION, "response": r} for r in GROUP])
    assert all(isinstance(r, float) for r in rewards)
    assert [rewards[i] for i in UNSCORABLE] == [0.0] * len(UNSCORABLE)
    return rewards


def assert_group(got: list[float], expected: list[float]) -> None:
    assert len(got) == len(GROUP) and all(isinstance(v, float) and math.isfinite(v) for v in got)
    assert got == pytest.approx(expected, abs=1e-6)


# --- OpenRLHF


async def openrlhf_fetch(url: str, query: str, prompt: str, label) -> dict:
    """openrlhf/utils/agent.py L322-356 `_fetch_rewards_via_http`: one query per request (L287),
    aiohttp, `raise_for_status`, 5 tries 1 s apart, then RuntimeError."""
    payload = {"query": [query], "prompts": [prompt], "labels": [label]}
    for _ in range(5):
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session,
                session.post(url, json=payload) as response,
            ):
                response.raise_for_status()
                return await response.json()
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(1)
    raise RuntimeError("Request error for 5 times")


def openrlhf_experience(rewards_info: dict) -> dict:
    """agent.py L289-298 (reward = rewards_info["rewards"]) then
    trainer/ppo_utils/samples_generator.py L254, L293-308: torch.tensor on the reward and on every
    extra_logs value (a None raises TypeError here)."""
    reward_val = rewards_info.get("rewards")
    info = {"reward": torch.tensor([reward_val])}
    for key, value in (rewards_info.get("extra_logs") or {}).items():
        info[key] = torch.tensor([value])
    return {"rewards": torch.tensor([reward_val]), "info": info}


def openrlhf_group_norm(experiences: list[dict], n: int) -> torch.Tensor:
    """trainer/ppo_utils/experience_maker.py L248-270: cat, reshape(-1, n), group mean/std."""
    rewards = torch.cat([e["rewards"] for e in experiences], dim=0).reshape(-1, n)
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + 1e-9)


def test_openrlhf_scores_a_grpo_group_including_empty_and_cut_think(live, expected):
    prompt = CHATML.format(INSTRUCTION)

    async def rollout():
        queries = [prompt + r + "<|im_end|>" for r in GROUP]
        return await asyncio.gather(*(openrlhf_fetch(live.url + "/get_reward", q, prompt, None) for q in queries))

    replies = run(rollout())
    experiences = [openrlhf_experience(reply) for reply in replies]
    assert_group([e["rewards"].item() for e in experiences], expected)
    advantages = openrlhf_group_norm(experiences, len(GROUP))
    assert torch.isfinite(advantages).all()
    keys = {frozenset(e["info"]) for e in experiences}
    assert len(keys) == 1, "every sample must log the same keys"
    assert {"flip_unscorable", "flip_guard", "flip_copied_fraction"} <= next(iter(keys))
    assert [e["info"]["flip_unscorable"].item() for e in experiences] == [
        1.0 if i in UNSCORABLE else 0.0 for i in range(len(GROUP))
    ]
    assert [replies[i]["unscorable"][0] for i in UNSCORABLE] == list(UNSCORABLE.values())


def test_a_null_in_the_reply_would_crash_openrlhf():
    with pytest.raises((TypeError, RuntimeError)):
        openrlhf_experience({"rewards": [0.5], "extra_logs": {"flip_pmi": [None]}})
    with pytest.raises((TypeError, RuntimeError)):
        openrlhf_experience({"rewards": [None], "extra_logs": {}})


def test_openrlhf_sees_an_engine_failure_as_an_http_error_it_retries(live):
    live.engine.healthy = False
    try:
        status = httpx.post(live.url + "/get_reward", json={"query": [CHATML.format("q") + "a"]}).status_code
    finally:
        live.engine.healthy = True
    assert status == 503  # raise_for_status raises ClientResponseError, an aiohttp.ClientError: retried


# --- slime


async def slime_remote_rm(url: str, prompt, response: str, label) -> dict:
    """slime/rollout/rm_hub/__init__.py L34-53 `remote_rm`: the JSON body becomes sample.reward."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for attempt in range(10):
            try:
                async with session.post(url, json={"prompt": prompt, "response": response, "label": label}) as resp:
                    resp.raise_for_status()
                    return await resp.json()
            except Exception:
                if attempt + 1 >= 10:
                    raise
                await asyncio.sleep(min(2**attempt, 30))
    raise AssertionError("unreachable")


def slime_post_process(rewards: list[dict], n: int) -> tuple[list, list]:
    """slime/utils/types.py L246 get_reward_value (reward[reward_key]); slime/ray/rollout.py L608-633
    group norm (torch.tensor(raw_rewards, dtype=float): a None raises TypeError)."""
    raw = [r["reward"] for r in rewards]
    grouped = torch.tensor(raw, dtype=torch.float).reshape(-1, n)
    grouped = grouped - grouped.mean(dim=-1, keepdim=True)
    grouped = grouped / (grouped.std(dim=-1, keepdim=True) + 1e-6)
    return raw, grouped.flatten().tolist()


def slime_nonzero_std(rewards: list[float]) -> bool:
    """slime/rollout/filter_hub/dynamic_sampling_filters.py L9-15 check_reward_nonzero_std."""
    return bool(torch.tensor(rewards, dtype=torch.float64).std() > 1e-6)


def test_slime_scores_a_grpo_group_including_empty_and_cut_think(live, expected):
    async def rollout():
        return await asyncio.gather(
            *(
                slime_remote_rm(live.url + "/slime_reward", CHATML.format(INSTRUCTION), r + "<|im_end|>", None)
                for r in GROUP
            )
        )

    replies = run(rollout())
    raw, normalised = slime_post_process(replies, len(GROUP))
    assert_group(raw, expected)
    assert all(math.isfinite(v) for v in normalised) and slime_nonzero_std(raw)
    assert [replies[i]["unscorable"] for i in UNSCORABLE] == list(UNSCORABLE.values())
    assert len({frozenset(r["extra_logs"]) for r in replies}) == 1


def test_a_null_reward_would_crash_slime():
    with pytest.raises(TypeError):
        slime_post_process([{"reward": 0.5}, {"reward": None}], 2)


# --- veRL


def verl_reward_loop(results: list[dict]) -> tuple[torch.Tensor, dict]:
    """verl/experimental/reward_loop/reward_manager/naive.py L89-94 (dict: score = result["score"], every
    item into reward_extra_info), then reward_loop.py L295-308: torch.tensor(scores, float32) and one
    np.array per key of the first sample's reward_extra_info (a key another sample lacks: KeyError)."""
    outputs = [{"reward_score": r["score"], "reward_extra_info": dict(r)} for r in results]
    scores = torch.tensor([o["reward_score"] for o in outputs], dtype=torch.float32)
    keys = list(outputs[0]["reward_extra_info"])
    extra = {key: np.array([o["reward_extra_info"][key] for o in outputs]) for key in keys}
    return scores, extra


def verl_args(response: str, url: str) -> dict:
    return {
        "data_source": "flip",
        "solution_str": response,
        "ground_truth": "",
        "extra_info": {"instruction": INSTRUCTION},
        "base_url": url,
    }


def test_verl_reward_loop_async_adapter(live, expected):
    from flip_reward.integrations.verl import compute_score_async

    # verl/trainer/ppo/reward.py L96: an async function is wrapped with partial(_call_with_kwargs_async)
    assert inspect.iscoroutinefunction(compute_score_async)

    async def step():
        return await asyncio.gather(*(compute_score_async(**verl_args(r, live.url)) for r in GROUP))

    scores, extra = verl_reward_loop(run(step()))
    assert_group(scores.tolist(), expected)
    assert all(v.dtype.kind == "f" and np.isfinite(v).all() for v in extra.values())
    assert extra["flip_unscorable"].tolist() == [1.0 if i in UNSCORABLE else 0.0 for i in range(len(GROUP))]


def test_verl_naive_and_dapo_sync_adapter_with_a_hydra_list_of_urls(live, expected):
    from flip_reward.integrations.verl import compute_score

    class ListConfig:  # iterable, not a list: as Hydra's ListConfig
        def __init__(self, items):
            self._items = list(items)

        def __iter__(self):
            return iter(self._items)

    results = [compute_score(**{**verl_args(r, live.url), "base_url": ListConfig([live.url])}) for r in GROUP]
    scores, _ = verl_reward_loop(results)
    assert_group(scores.tolist(), expected)


def test_verl_base_url_as_omegaconf_listconfig(live, expected):
    from flip_reward.integrations.verl import compute_score

    omegaconf = pytest.importorskip("omegaconf")
    real = compute_score(**{**verl_args(GROUP[0], live.url), "base_url": omegaconf.ListConfig([live.url])})
    assert real["score"] == pytest.approx(expected[0])


def test_verl_batch_manager(live, expected):
    """verl/workers/reward_manager/batch.py L70-75 calls compute_score(data_sources=, solution_strs=,
    ground_truths=, extra_infos=, **reward_kwargs); L100-110: dict scores, reward_extra_info lists."""
    from flip_reward.integrations.verl import compute_score_batch

    scores = compute_score_batch(
        data_sources=np.array(["flip"] * len(GROUP), dtype=object),
        solution_strs=GROUP,
        ground_truths=[""] * len(GROUP),
        extra_infos=np.array([{"instruction": INSTRUCTION}] * len(GROUP), dtype=object),
        base_url=live.url,
    )
    reward_extra_info = defaultdict(list)
    rewards = []
    for score in scores:
        rewards.append(score["score"])
        for key, value in score.items():
            reward_extra_info[key].append(value)
    assert_group(torch.tensor(rewards, dtype=torch.float32).tolist(), expected)
    assert {len(v) for v in reward_extra_info.values()} == {len(GROUP)}


def _prime_worker_result(evaluation_func, task, completion, reference, extra_info):
    return evaluation_func(task, completion, reference, extra_info)


def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):  # verl/trainer/ppo/reward.py L31-37, mirrored
    return raw_fn(*args, **{**kwargs, **extra_kwargs})


def test_verl_prime_manager_loaded_by_file_path_pickles_and_gets_floats(live, expected):
    """verl/utils/import_utils.py load_module: a file path is loaded under a made-up module name;
    verl/workers/reward_manager/prime.py L35-87: partial(evaluation_func, task, completion,
    reference, extra_info) runs in a ProcessPoolExecutor (pickled); float(result) or float(result[0])."""
    spec = importlib.util.spec_from_file_location("custom_module_123", ROOT / "flip_reward/integrations/verl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    evaluation_func = functools.partial(_call_with_kwargs, module.compute_score, {"base_url": live.url})
    pickle.dumps(evaluation_func)  # what the process pool does; a file-path function would fail here
    evaluation_func("flip", GROUP[0], "", {"instruction": INSTRUCTION})  # the parent's client exists before the fork
    # ProcessPoolExecutor's default on Linux (Python <= 3.13) forks the trainer process
    assert_group(_prime_pool(evaluation_func, multiprocessing.get_context("fork")), expected)


def _prime_pool(evaluation_func, context) -> list[float]:
    with ProcessPoolExecutor(max_workers=4, mp_context=context) as pool:
        results = list(
            pool.map(
                _prime_worker_result,
                [evaluation_func] * len(GROUP),
                ["flip"] * len(GROUP),
                GROUP,
                [""] * len(GROUP),
                [{"instruction": INSTRUCTION}] * len(GROUP),
            )
        )
    return [float(r) if isinstance(r, (int, float, bool)) else float(r[0]) for r in results]


def test_a_none_score_would_stop_verl():
    with pytest.raises(TypeError):
        verl_reward_loop([{"score": 0.5}, {"score": None}])


# --- TRL (the installed trl's own code)


def test_trl_reward_function_is_picklable_and_async_as_trl_reads_it(live, expected):
    from trl.trainer.utils import get_callable_name, is_async_callable

    from flip_reward.integrations.trl import flip_reward, make_reward_func

    for func in (flip_reward, make_reward_func(live.url)):
        # trl/experimental/async_grpo/async_rollout_worker.py L977-986: pickle.dumps(reward_funcs) or refuse
        restored = pickle.loads(pickle.dumps(func))
        assert is_async_callable(restored) and get_callable_name(restored) == "flip_reward"
    metrics: dict[str, list[float]] = defaultdict(list)
    got = run(
        make_reward_func(live.url)(
            prompts=[INSTRUCTION] * len(GROUP),
            completions=GROUP,
            completion_ids=[[1]] * len(GROUP),
            log_metric=lambda name, value: metrics[name].append(value),
        )
    )
    assert_group(got, expected)
    assert metrics["flip_unscorable"] == [pytest.approx(len(UNSCORABLE) / len(GROUP))]


# --- open-instruct


def test_open_instruct_verifier_on_its_role_content_query(live, expected):
    """open_instruct/dataset_transformation.py L1648 builds the query "\\n".join(f"{role}: {content}");
    ground_truth_utils.py L1247-1309 apply_verifiable_reward: gathers verifier.async_call(...), then
    reward_mult * result.score * weight (a None score raises TypeError)."""
    from flip_reward.integrations.open_instruct import FlipVerifier

    verifier = FlipVerifier()
    verifier._urls = [live.url]
    query = "\n".join(f"{m['role']}: {m['content']}" for m in [{"role": "user", "content": INSTRUCTION}])

    async def step():
        return await asyncio.gather(
            *(verifier.async_call(tokenized_prediction=[1], prediction=r, label="", query=query) for r in GROUP)
        )

    results = run(step())
    weighted = [10.0 * r.score * verifier.weight for r in results]
    assert_group([w / 10.0 for w in weighted], expected)
    assert [results[i].reasoning for i in UNSCORABLE] == list(UNSCORABLE.values())
    sync = verifier([1], GROUP[0], "", query)
    assert sync.score == pytest.approx(expected[0])


def test_open_instruct_system_prompt_and_earlier_turns_are_context(live):
    from flip_reward.integrations.open_instruct import flip_item

    query = "system: You are terse.\nuser: Hi\nassistant: Hello!\nuser: " + INSTRUCTION
    item = flip_item(GROUP[0], "", query)
    assert item["messages"][-1] == {"role": "user", "content": INSTRUCTION}
    assert [m["role"] for m in item["messages"]] == ["system", "user", "assistant", "user"]
    with_context = httpx.post(live.url + "/reward", json=item).json()["reward"]
    literal = httpx.post(live.url + "/reward", json={"prompt": query, "response": GROUP[0]}).json()["reward"]
    assert isinstance(with_context, float) and with_context != literal
