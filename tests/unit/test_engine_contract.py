"""The engine contract on the unit tests' fake; the real engines run the same check in
tests/integration/test_engine_contract.py."""

from __future__ import annotations

import pytest

from flip_reward.engines.base import Engine
from tests.engine_contract import check_engine_contract
from tests.fakes import FakeEngine


async def test_fake_engine_keeps_the_contract():
    engine = FakeEngine()
    engine.delay_s = 0.0
    original = engine.generate

    async def slow_when_long(ids, params):  # a long generation takes a while, as on a real engine
        engine.delay_s = 5.0 if params.max_tokens > 100 else 0.0
        return await original(ids, params)

    engine.generate = slow_when_long
    await check_engine_contract(engine)
    assert engine.shut_down


@pytest.mark.parametrize("runner", ["v1", "v2"])
async def test_vllm_engine_keeps_the_contract_on_either_runners_layout(runner):
    """The in-process engine's own code (supervision, prompt-logprob reading, retries without the
    cache) over a simulated core in the V1 or the V2 runner's layout (tests/vllm_shapes.py)."""
    from tests.fakes import WordTokenizer
    from tests.vllm_shapes import simulated_core_engine

    engine = simulated_core_engine(runner, WordTokenizer())
    await check_engine_contract(engine)
    assert any(cached for _, cached, _ in engine.requests), "the tail was never read from the cache"


def test_an_engine_missing_a_method_fails_when_built():
    class Partial(Engine):
        model_name, max_model_len = "partial", 128

        @property
        def tokenizer(self):
            return None

        async def generate(self, prompt_token_ids, params):
            raise NotImplementedError

        async def prompt_logprobs(self, prompt_token_ids, scored_from=0):
            raise NotImplementedError

        def is_healthy(self):
            return True

    with pytest.raises(TypeError, match=r"abstract methods.*stats"):
        Partial()
