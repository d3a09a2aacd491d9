"""Run with AReaL's source tree (4aef98d) as argv[1] (its package needs a GPU stack to install, so
only the reward path is imported: areal.api.reward_api and the areal.utils.logging it uses, with
colorlog installed; the top-level areal/__init__.py, which starts the infra imports, is not run).
RLVRWorkflow's reward call (areal/workflow/rlvr.py L73, L101-107): AsyncRewardWrapper(reward_fn),
then reward_fn(prompt_str, completions_str, input_tokens, output_tokens, **data) per sample, all
the group's samples at once. Reads {"prompt", "messages", "responses"} as JSON on stdin; prints
the rewards, or the error."""

import asyncio
import json
import sys
import types
from pathlib import Path

areal = types.ModuleType("areal")  # a bare package: areal/__init__.py imports the training infra
areal.__path__ = [str(Path(sys.argv[1]) / "areal")]
sys.modules["areal"] = areal

from areal.api.reward_api import AsyncRewardWrapper  # noqa: E402

from flip_reward.integrations.areal import reward_fn  # noqa: E402


async def main() -> None:
    given = json.load(sys.stdin)
    wrapper = AsyncRewardWrapper(reward_fn)
    data = {"messages": given["messages"], "answer": None}
    try:
        rewards = await asyncio.gather(*(wrapper(given["prompt"], r, [1], [2], **data) for r in given["responses"]))
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    print(json.dumps({"rewards": rewards, "max_workers": wrapper.max_workers}))


if __name__ == "__main__":
    asyncio.run(main())
