"""The trainer adapters and /rank against the real service, with the exact argument and payload
shapes each trainer sends. Each reward is checked against the service's own answer for the same
items sent the same way (one item alone, or the same items as one batch). The GRPO-group tests
send one prompt with 8 completions (an EOS-only one, one cut off inside <think>, one that only
copies the prompt) through every trainer route and adapter: every sample a finite number, the
unscorable ones the floor with their reason, the others /batch_reward's. What each trainer then
does with the reply is mirrored in tests/contracts/ (upstream file, line and commit there)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from flip_reward.client import FlipClient
from flip_reward.integrations.open_instruct import FlipVerifier
from flip_reward.integrations.trl import make_reward_func
from flip_reward.integrations.verl import compute_score, compute_score_async, compute_score_batch
from tests.contracts.conftest import GROUP, UNSCORABLE
from tests.integration.conftest import load_jsonl

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rows():
    return load_jsonl("selfinstruct_reconstruction_64.jsonl")[:4]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from flip_reward.config import Settings
    from flip_reward.models import resolve_llm

    return AutoTokenizer.from_pretrained(resolve_llm(None, Settings().cache_dir))


def batch_rewards(http, items):
    return http.post("/batch_reward", json={"items": items}).json()["rewards"]


def single_reward(http, item):
    return http.post("/reward", json=item).json()["reward"]


def trl_kwargs(prompts, completions, rows):
    """What GRPOTrainer._calculate_rewards passes: the dataset's other columns, trainer hooks."""
    return dict(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1, 2, 3]] * len(prompts),
        id=[r["id"] for r in rows],
        source=[r["source"] for r in rows],
        trainer_state=None,
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
    )


def test_trl_plain_form(server, http, rows):
    reward = make_reward_func(server.url)
    prompts = [r["instruction"] for r in rows]
    completions = [r["response"] for r in rows]
    got = asyncio.run(reward(**trl_kwargs(prompts, completions, rows)))
    assert got == batch_rewards(http, [{"prompt": p, "response": c} for p, c in zip(prompts, completions)])
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in got)


def test_trl_conversational_form(server, http, rows):
    reward = make_reward_func(server.url)
    prompts = [
        [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": r["instruction"]}] for r in rows
    ]
    completions = [[{"role": "assistant", "content": r["response"]}] for r in rows]
    completions[-1] = [{"role": "assistant", "content": ""}]  # an empty completion: the floor
    got = asyncio.run(reward(**trl_kwargs(prompts, completions, rows)))
    expected = batch_rewards(http, [{"messages": p, "response": c[0]["content"]} for p, c in zip(prompts, completions)])
    assert got == expected and got[-1] == 0.0


def test_trl_through_grpo_trainer_reward_path(server, http, rows):
    """TRL's own reward computation (GRPOTrainer._calculate_rewards) with the FLIP function."""
    pytest.importorskip("trl")
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from flip_reward.config import Settings
    from flip_reward.models import resolve_llm

    config = GRPOConfig(
        output_dir=str(server.log_path.parent / "grpo"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    dataset = Dataset.from_list([{"prompt": r["instruction"], "id": r["id"]} for r in rows])
    trainer = GRPOTrainer(
        model=resolve_llm(None, Settings().cache_dir),
        reward_funcs=make_reward_func(server.url),
        args=config,
        train_dataset=dataset,
    )
    prompts = [r["instruction"] for r in rows]
    completions = [r["response"] for r in rows]
    inputs = [{"prompt": p, "completion": c, "id": r["id"]} for p, c, r in zip(prompts, completions, rows)]
    rewards = trainer._calculate_rewards(inputs, prompts, completions, [[1]] * len(rows))
    expected = batch_rewards(http, [{"prompt": p, "response": c} for p, c in zip(prompts, completions)])
    assert rewards.shape == (len(rows), 1)
    assert torch.allclose(rewards[:, 0], torch.tensor(expected, dtype=torch.float32))
    assert trainer.reward_func_names == ["flip_reward"]


def openrlhf_sample(tokenizer, instruction: str, response: str) -> tuple[str, str]:
    """(prompt, query) as OpenRLHF builds them: the chat-templated prompt, and prompt + response
    token ids decoded with the special tokens kept."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    action_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt, tokenizer.decode(prompt_ids + action_ids, skip_special_tokens=False)


def smollm_messages(tokenizer, instruction: str) -> list[dict]:
    """The turns SmolLM2's template renders: its default system message, then the user."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False)
    system = prompt.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]
    return [{"role": "system", "content": system}, {"role": "user", "content": instruction}]


def test_openrlhf_single(http, rows, tokenizer):
    row = rows[0]
    prompt, query = openrlhf_sample(tokenizer, row["instruction"], row["response"])
    assert query.endswith("<|im_end|>")
    body = http.post("/get_reward", json={"query": [query], "prompts": [prompt], "labels": [None]}).json()
    expected = single_reward(
        http, {"messages": smollm_messages(tokenizer, row["instruction"]), "response": row["response"]}
    )
    assert body["rewards"] == [expected] and body["scores"] == [expected]
    assert body["unscorable"] == [None]
    assert all(len(v) == 1 and isinstance(v[0], float) for v in body["extra_logs"].values())


def test_openrlhf_batch(http, rows, tokenizer):
    samples = [openrlhf_sample(tokenizer, r["instruction"], r["response"]) for r in rows]
    body = http.post(
        "/get_reward",
        json={"query": [q for _, q in samples], "prompts": [p for p, _ in samples], "labels": [""] * len(rows)},
    ).json()
    expected = batch_rewards(
        http, [{"messages": smollm_messages(tokenizer, r["instruction"]), "response": r["response"]} for r in rows]
    )
    assert body["rewards"] == expected
    assert len(body["extra_logs"]["flip_conditional"]) == len(rows)


def test_slime_templated_and_message_prompts(http, rows, tokenizer):
    row = rows[1]
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": row["instruction"]}], tokenize=False, add_generation_prompt=True
    )
    body = http.post("/slime_reward", json={"prompt": templated, "response": row["response"], "label": "x"}).json()
    expected = single_reward(
        http, {"messages": smollm_messages(tokenizer, row["instruction"]), "response": row["response"]}
    )
    assert body["reward"] == expected and body["error"] is None
    plain = http.post(
        "/slime_reward",
        json={"prompt": [{"role": "user", "content": row["instruction"]}], "response": row["response"], "label": None},
    ).json()
    assert plain["reward"] == single_reward(http, {"prompt": row["instruction"], "response": row["response"]})


def test_verl_sync_and_async(server, http, rows):
    row = rows[2]
    expected = http.post("/reward", json={"prompt": row["instruction"], "response": row["response"]}).json()
    kwargs = dict(
        data_source="self-instruct",
        solution_str=row["response"] + "<|im_end|>",
        ground_truth="",
        extra_info={"instruction": row["instruction"]},
        base_url=server.url,
    )
    result = compute_score(**kwargs)
    assert result["score"] == expected["reward"] and result["flip_unscorable"] == 0.0
    assert asyncio.run(compute_score_async(**kwargs)) == result
    from_truth = compute_score(**{**kwargs, "extra_info": None, "ground_truth": row["instruction"]})
    assert from_truth["score"] == expected["reward"]


def test_rank_on_real_engine(http, rows):
    responses = [r["response"] for r in rows]
    body = http.post("/rank", json={"prompt": rows[0]["instruction"], "responses": responses}).json()
    expected = batch_rewards(http, [{"prompt": rows[0]["instruction"], "response": c} for c in responses])
    assert body["rewards"] == expected
    best = max(range(len(expected)), key=lambda i: (expected[i], -i))
    assert body["best_index"] == best == body["ranking"][0]


def test_client_chunks_keep_order_on_real_service(server, rows):
    items = [{"id": r["id"], "prompt": r["instruction"], "response": r["response"]} for r in rows]
    with FlipClient(server.url, chunk_size=1, max_concurrency=4) as client:
        results = client.score(items)
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    assert all(r["reward"] is not None for r in results)


# --- a GRPO group through every trainer route and adapter


@pytest.fixture(scope="module")
def group_instruction(rows):
    return rows[0]["instruction"]


@pytest.fixture(scope="module")
def group(rows, group_instruction):
    """8 completions: real ones, an EOS-only one, one cut inside <think>, one that only copies."""
    completions = [
        rows[0]["response"],
        rows[1]["response"],
        "<think>hm</think>" + rows[0]["response"],
        *GROUP[3:5],
        rows[2]["response"],
        rows[3]["response"],
        f"{group_instruction} {group_instruction}",
    ]
    assert len(completions) == 8
    return completions


def assert_group(got, expected, reasons=None):
    assert len(got) == 8 and all(isinstance(v, float) and math.isfinite(v) for v in got), got
    assert got == pytest.approx(expected, abs=1e-6)
    for i, reason in UNSCORABLE.items():
        assert got[i] == 0.0  # the floor (FLIP_UNSCORABLE_REWARD's default)
        if reasons is not None:
            assert reasons[i] == reason
    assert all(got[i] > 0.0 for i in range(8) if i not in UNSCORABLE)


@pytest.fixture(scope="module")
def group_expected(http, group, group_instruction):
    body = http.post(
        "/batch_reward", json={"items": [{"prompt": group_instruction, "response": c} for c in group]}
    ).json()
    assert_group(body["rewards"], body["rewards"], [r["unscorable"] for r in body["results"]])
    return body["rewards"]


def test_group_through_openrlhf_route(http, tokenizer, group, group_instruction):
    samples = [openrlhf_sample(tokenizer, group_instruction, c) for c in group]
    replies = [
        http.post("/get_reward", json={"query": [q], "prompts": [p], "labels": [None]}).json() for p, q in samples
    ]
    expected = batch_rewards(
        http, [{"messages": smollm_messages(tokenizer, group_instruction), "response": c} for c in group]
    )
    assert_group([r["rewards"][0] for r in replies], expected, [r["unscorable"][0] for r in replies])
    assert len({frozenset(r["extra_logs"]) for r in replies}) == 1


def test_group_through_slime_route(http, tokenizer, group, group_instruction):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": group_instruction}], tokenize=False, add_generation_prompt=True
    )
    replies = [
        http.post("/slime_reward", json={"prompt": prompt, "response": c + tokenizer.eos_token, "label": None}).json()
        for c in group
    ]
    expected = batch_rewards(
        http, [{"messages": smollm_messages(tokenizer, group_instruction), "response": c} for c in group]
    )
    assert_group([r["reward"] for r in replies], expected, [r["unscorable"] for r in replies])


def test_group_through_verl_adapters(server, group, group_instruction, group_expected):
    args = [
        {
            "data_source": "flip",
            "solution_str": c + "<|im_end|>",
            "ground_truth": "",
            "extra_info": {"instruction": group_instruction},
            "base_url": server.url,
        }
        for c in group
    ]
    assert_group([compute_score(**a)["score"] for a in args], group_expected)

    async def step():
        return await asyncio.gather(*(compute_score_async(**a) for a in args))

    results = asyncio.run(step())
    assert_group([r["score"] for r in results], group_expected)
    assert [r["flip_unscorable"] for r in results] == [float(i in UNSCORABLE) for i in range(8)]
    batch = compute_score_batch(
        data_sources=["flip"] * 8,
        solution_strs=[a["solution_str"] for a in args],
        ground_truths=[""] * 8,
        extra_infos=[a["extra_info"] for a in args],
        base_url=[server.url],
    )
    assert_group([r["score"] for r in batch], group_expected)


def test_group_through_trl_reward_function(server, group, group_instruction, group_expected):
    reward = make_reward_func(server.url)
    got = asyncio.run(reward(prompts=[group_instruction] * 8, completions=group, completion_ids=[[1]] * 8))
    assert_group(got, group_expected)


def test_group_through_open_instruct_verifier(server, group, group_instruction, group_expected):
    verifier = FlipVerifier()
    verifier._urls = [server.url]

    async def step():
        return await asyncio.gather(*(verifier.async_call([1], c, "", f"user: {group_instruction}") for c in group))

    results = asyncio.run(step())
    assert_group([r.score for r in results], group_expected, [r.reasoning for r in results])


# --- the same group through the verifiers, NeMo Gym, SkyRL and AReaL adapters and route


@pytest.fixture
def flip_env(server, monkeypatch):
    """The adapters that trainers load by import path read the service from the environment."""
    monkeypatch.setenv("FLIP_REWARD_URL", server.url)
    return server


def test_group_through_verifiers_reward(flip_env, group, group_instruction, group_expected):
    from flip_reward.integrations.verifiers import reward
    from tests.contracts.test_more_trainer_contracts import Trace, verifiers_rollout_close

    task = SimpleNamespace(prompt=[{"role": "user", "content": group_instruction}], system_prompt=None)

    async def rollouts():
        return await asyncio.gather(*(verifiers_rollout_close(task, Trace(c), {"flip": (reward, 1.0)}) for c in group))

    traces = asyncio.run(rollouts())
    assert not any(t.has_error for t in traces)
    assert_group([t.reward for t in traces], group_expected)
    assert [t.metrics["flip_unscorable"] for t in traces] == [float(i in UNSCORABLE) for i in range(8)]


def test_group_through_nemo_gym_verify_route(http, group, group_instruction, group_expected):
    def row(text):
        output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
        return {
            "responses_create_params": {"input": [{"role": "user", "content": group_instruction}]},
            "response": {"id": "resp", "object": "response", "output": output if text else []},
        }

    assert http.post("/seed_session", json=row("x")).json() == {}
    replies = [http.post("/verify", json=row(c)).json() for c in group]
    assert_group([r["reward"] for r in replies], group_expected, [r["flip_unscorable_reason"] for r in replies])
    assert len({frozenset(r) for r in replies}) == 1


def test_group_through_skyrl_env(flip_env, group, group_instruction, group_expected):
    from concurrent.futures import ThreadPoolExecutor

    from flip_reward.integrations.skyrl import FlipEnv

    def trajectory(completion):
        env = FlipEnv(env_config={}, extras={"max_turns": 1})
        env.init([{"role": "user", "content": group_instruction}])
        step = env.step(completion + "<|im_end|>")
        assert step["done"]
        return step["reward"], env.get_metrics()

    with ThreadPoolExecutor(max_workers=32) as pool:  # SkyRL's env pool
        results = list(pool.map(trajectory, group))
    assert_group([reward for reward, _ in results], group_expected)
    assert len({frozenset(m) for _, m in results}) == 1


def test_group_through_areal_reward_fn(flip_env, http, tokenizer, group, group_instruction, group_expected):
    from flip_reward.integrations.areal import reward_fn

    messages = [{"role": "user", "content": group_instruction}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rewards = [reward_fn(prompt, c + tokenizer.eos_token, [1], [2], messages=messages) for c in group]
    assert_group(rewards, group_expected)
    # without `messages`, from the templated prompt: SmolLM2's template adds its system message
    expected = batch_rewards(
        http,
        [{"messages": smollm_messages(tokenizer, group_instruction), "response": c} for c in group[:2]],
    )
    assert [reward_fn(prompt, c + tokenizer.eos_token, [1], [2]) for c in group[:2]] == pytest.approx(expected)


@pytest.mark.parametrize("stack", ["verifiers", "skyrl", "nemo_gym", "areal"])
def test_group_through_upstream_code(server, http, stack, group, group_instruction, group_expected):
    """Each stack's own call path (tests/contracts/upstream/, run from a scratch virtualenv with the
    upstream package; skipped without one) against the real engine."""
    from tests.contracts.test_upstream_code import drive, results_rewards, upstream_areal_source, upstream_driver_input

    messages = [{"role": "user", "content": group_instruction}]
    args = [str(upstream_areal_source())] if stack == "areal" else []
    if stack == "nemo_gym":
        args = [
            str(Path(__file__).resolve().parents[2] / "examples" / "nemo_gym" / "resources_servers" / "flip_reward")
        ]
    got = drive(stack, server.url, upstream_driver_input(stack, messages, group), *args)
    assert_group(results_rewards(stack, got), group_expected)
