"""The engine contract (flip_reward/engines/base.py), checked the same way on every engine: the unit
tests' fake (tests/unit/test_engine_contract.py), the in-process vLLM engine and the remote engine
against real `vllm serve` processes (tests/integration/test_engine_contract.py)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from flip_reward.engines.base import Engine, EngineUnavailable, GenerationParams

PROMPT = "The sky is blue because sunlight is scattered by the air. Count slowly from one to five hundred:"


async def _until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def check_engine_contract(engine: Engine, long_tokens: int = 400, terminal: bool = True) -> None:
    """Every method of the contract, in an order that ends with the engine failed and shut down.
    `long_tokens`: a generation long enough to be caught in flight. `terminal=False` stops before
    mark_failed and leaves the engine serving (for an engine a later test checks to the end)."""
    assert isinstance(engine, Engine)
    assert engine.model_name and engine.max_model_len > 0
    ids = engine.tokenizer.encode(PROMPT, add_special_tokens=False)
    assert engine.is_healthy() and engine.is_alive()
    assert engine.outstanding_requests == 0 and isinstance(engine.last_progress_at, float)

    # generate: greedy is deterministic
    params = GenerationParams(max_tokens=8)
    first = await engine.generate(ids, params)
    again = await engine.generate(ids, params)
    assert isinstance(first.text, str) and first.text == again.text
    assert first.prompt_tokens == len(ids) and 1 <= first.completion_tokens <= 8

    # prompt logprobs: one per token, None first; from `scored_from` on, the same values
    full = await engine.prompt_logprobs(ids)
    assert len(full) == len(ids) and full[0] is None
    assert all(isinstance(lp, float) and lp <= 0.0 for lp in full[1:])
    half = len(ids) // 2
    tail = await engine.prompt_logprobs(ids, scored_from=half)
    assert len(tail) == len(ids)
    assert tail[half:] == pytest.approx(full[half:], abs=1e-3)

    # progress probe and stats
    progress = engine.last_progress_at
    assert engine.outstanding_requests == 0 and progress <= time.monotonic()
    stats = engine.stats()
    json.dumps(stats)  # /info serializes it
    assert "unfinished_requests" in stats and "prefix_cache" in stats

    # abort: cancelling the awaiting task ends the request in the engine
    long = GenerationParams(max_tokens=long_tokens)
    request = asyncio.ensure_future(engine.generate(ids, long))
    await _until(lambda: engine.outstanding_requests == 1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert engine.outstanding_requests == 0
    await _until(lambda: engine.stats()["unfinished_requests"] == 0)
    assert engine.is_healthy()
    if not terminal:
        return

    # mark_failed: the request in flight fails at once, and every later one
    request = asyncio.ensure_future(engine.generate(ids, long))
    await _until(lambda: engine.outstanding_requests == 1)
    engine.mark_failed("contract test")
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(request, 10)
    assert not engine.is_alive() and not engine.is_healthy()
    with pytest.raises(EngineUnavailable):
        await engine.generate(ids, params)
    with pytest.raises(EngineUnavailable):
        await engine.prompt_logprobs(ids)
    assert engine.outstanding_requests == 0
    await engine.shutdown()
