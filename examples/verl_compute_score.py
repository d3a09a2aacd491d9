"""veRL with FLIP as a custom reward function, against the local service.

veRL config keys (the `app` package must be importable by the reward workers):

    custom_reward_function.path=<this repo>/flip_reward/integrations/verl.py
    custom_reward_function.name=compute_score            # compute_score_async for veRL's reward loop
    +custom_reward_function.reward_kwargs.base_url=http://127.0.0.1:8000

veRL gives the function only the decoded response; the instruction must be in the dataset row,
best as extra_info["instruction"] (see flip_reward/integrations/verl.py for the other places it looks).
This script builds such rows from data/samples and calls the function as veRL's naive reward
manager does (keyword arguments, EOS token left in the decoded response), sync and async.

    .venv/bin/python examples/verl_compute_score.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples._common import URL, selfinstruct
from flip_reward.integrations.verl import compute_score, compute_score_async


def verl_row(row: dict) -> dict:
    """A veRL parquet row: chat prompt for the rollout, the instruction again in extra_info."""
    return {
        "data_source": "self-instruct",
        "prompt": [{"role": "user", "content": row["instruction"]}],
        "reward_model": {"style": "model", "ground_truth": ""},
        "extra_info": {"instruction": row["instruction"], "id": row["id"]},
    }


def main() -> None:
    print(f"custom_reward_function.path={Path(__file__).resolve().parents[1] / 'flip_reward/integrations/verl.py'}")
    print("custom_reward_function.name=compute_score")
    print(f"+custom_reward_function.reward_kwargs.base_url={URL}\n")
    for row in selfinstruct(3):
        data = verl_row(row)
        result = compute_score(
            data_source=data["data_source"],
            solution_str=row["response"] + "<|im_end|>",
            ground_truth=data["reward_model"]["ground_truth"],
            extra_info=data["extra_info"],
            base_url=URL,
        )
        print(f"sync : {result}")
    result = asyncio.run(
        compute_score_async("self-instruct", "Paris.", "", {"instruction": "Name a city."}, base_url=URL)
    )
    print(f"async: {result}")


if __name__ == "__main__":
    main()
