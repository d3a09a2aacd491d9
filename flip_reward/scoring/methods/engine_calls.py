"""Engine calls shared by the scoring methods: awaited together, timed and counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from flip_reward import metrics
from flip_reward.engines.base import Engine, EngineUnavailable, Generation, GenerationParams


async def gather(calls: list[Awaitable[Any]]) -> list[Any]:
    """Await engine calls together; a dead engine fails the whole batch, other errors stay per item."""
    if len(calls) == 1:  # a single item: awaited in this task, without a task of its own (a single's cost)
        try:
            return [await calls[0]]
        except EngineUnavailable:
            raise
        except Exception as exc:
            return [exc]
    outputs = await asyncio.gather(*calls, return_exceptions=True)
    for out in outputs:
        if isinstance(out, EngineUnavailable):
            raise out
    return outputs


async def timed_generate(engine: Engine, token_ids: list[int], params: GenerationParams) -> Generation:
    started = time.perf_counter()
    generation = await engine.generate(token_ids, params)
    metrics.RECONSTRUCTION_LATENCY.observe(time.perf_counter() - started)
    metrics.PROMPT_TOKENS.inc(generation.prompt_tokens)
    metrics.GENERATED_TOKENS.inc(generation.completion_tokens)
    return generation
