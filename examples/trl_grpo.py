"""TRL GRPO with FLIP as the reward, against the local service (start it with `make serve`).

    .venv/bin/python examples/trl_grpo.py                  # one real GRPO step on CPU (SmolLM2-135M policy)
    .venv/bin/python examples/trl_grpo.py --conversational # the same with chat-form prompts
    .venv/bin/python examples/trl_grpo.py --direct         # no trainer: call the reward function as TRL does

The reward function is `make_reward_func(URL)`; the rest is an ordinary GRPOConfig.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples._common import URL, selfinstruct
from flip_reward.integrations.trl import make_reward_func


def dataset_rows(conversational: bool, n: int) -> list[dict]:
    rows = selfinstruct(n)
    if conversational:
        return [{"prompt": [{"role": "user", "content": r["instruction"]}], "id": r["id"]} for r in rows]
    return [{"prompt": r["instruction"], "id": r["id"]} for r in rows]


def direct(conversational: bool) -> None:
    """Call the reward function with the keyword arguments GRPOTrainer passes."""
    reward = make_reward_func(URL)
    rows = selfinstruct(2)
    if conversational:
        prompts = [[{"role": "user", "content": r["instruction"]}] for r in rows for _ in range(2)]
        completions = [[{"role": "assistant", "content": text}] for r in rows for text in (r["response"], "Sure.")]
    else:
        prompts = [r["instruction"] for r in rows for _ in range(2)]
        completions = [text for r in rows for text in (r["response"], "Sure.")]
    rewards = asyncio.run(
        reward(
            prompts=prompts,
            completions=completions,
            completion_ids=[[0]] * len(prompts),
            id=[r["id"] for r in rows for _ in range(2)],
            trainer_state=None,
        )
    )
    for completion, value in zip(completions, rewards):
        text = completion if isinstance(completion, str) else completion[0]["content"]
        print(f"{value!s:>22}  {text[:60]!r}")


def train(conversational: bool, steps: int) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from flip_reward.config import Settings
    from flip_reward.models import resolve_llm

    policy = resolve_llm(None, Settings().cache_dir)  # the built-in SmolLM2-135M-Instruct
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="flip-grpo-"),
        max_steps=steps,
        per_device_train_batch_size=4,
        num_generations=4,  # a GRPO group: 4 completions per prompt, rewarded together
        max_completion_length=32,
        learning_rate=1e-6,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=make_reward_func(URL),
        args=config,
        train_dataset=Dataset.from_list(dataset_rows(conversational, 8)),
    )
    trainer.train()
    for entry in trainer.state.log_history:
        if "rewards/flip_reward/mean" in entry:
            print(
                f"step {entry['step']}: flip reward mean {entry['rewards/flip_reward/mean']:.4f} "
                f"(std {entry['rewards/flip_reward/std']:.4f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversational", action="store_true", help="chat-form prompts and completions")
    parser.add_argument("--direct", action="store_true", help="call the reward function without a trainer")
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    try:
        import trl  # noqa: F401
    except ImportError:
        args.direct = True
        print("trl is not installed: calling the reward function directly with TRL's arguments")
    if args.direct:
        direct(args.conversational)
    else:
        train(args.conversational, args.steps)


if __name__ == "__main__":
    main()
