"""Run in a virtualenv with verifiers (a60a606) installed: the FLIP reward plugged into a real
verifiers v1 Task by import path, scored by Task.score. Reads {"instruction", "system", "responses"}
as JSON on stdin; prints per response the trace's reward, reward names and metrics, or the error."""

import asyncio
import json
import sys

import verifiers.v1 as vf
from verifiers.v1.graph import MessageNode
from verifiers.v1.types import AssistantMessage, UserMessage


class FlipTask(vf.Task):
    pass


async def score(task: vf.Task, text: str) -> dict:
    trace = vf.Trace(
        agent=vf.AgentInfo(config=vf.AgentConfig()),
        task=vf.TraceTask(type="FlipTask", data=task.data),
        nodes=[
            MessageNode(parent=None, message=UserMessage(content=task.data.prompt[0].content), sampled=False),
            MessageNode(parent=0, message=AssistantMessage(content=text), sampled=True),
        ],
    )
    try:
        await task.score(trace)  # what the rollout runs under boundary(TaskError)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"reward": trace.reward, "rewards": sorted(trace.rewards), "metrics": trace.metrics}


async def main() -> None:
    given = json.load(sys.stdin)
    config = vf.TaskConfig(rewards={"flip": {"fn": "flip_reward.integrations.verifiers:reward", "weight": 1.0}})
    data = vf.TaskData(idx=0, prompt=[UserMessage(content=given["instruction"])], system_prompt=given["system"])
    task = FlipTask(data, config)
    print(json.dumps(await asyncio.gather(*(score(task, r) for r in given["responses"]))))


asyncio.run(main())
