"""bench/throughput.py's ceiling runs the shipped scoring: the bench and the service give the same
reward for the same item (test doubles for the engine and the embedder, as in every unit test)."""

import asyncio

import pytest

from bench.throughput import LogprobCounter, _singles_in_process, score_options, score_raw
from tests.fakes import FakeEngine, HashEmbedder

ITEMS = [
    {
        "id": "honest",
        "prompt": "Write a short poem about the autumn rain in the city",
        "response": "Grey drops drum on tin roofs across the city",
    },
    {
        "id": "framed",
        "prompt": "Write a short poem about the autumn rain in the city",
        "response": "Sure! You asked me to write a short poem about the autumn rain. Grey drops drum on tin roofs.",
    },
    {
        "id": "stuffed",
        "prompt": "Write a short poem about the autumn rain in the city",
        "response": "city rain autumn poem short write " * 3,
    },
    {"id": "copy", "prompt": "List three uses of baking soda", "response": "List three uses of baking soda."},
]


@pytest.mark.parametrize("method", ["likelihood", "generate", "judge"])
def test_the_bench_and_the_service_give_the_same_reward(client, settings, method):
    served = [client.post("/reward", json={**item, "method": method}).json() for item in ITEMS]
    bench_settings = settings.model_copy(update={"method": method})
    raw = asyncio.run(score_raw(FakeEngine(), HashEmbedder(), bench_settings, ITEMS))
    assert [r.reward for r in raw] == [s["reward"] for s in served]
    assert [r.copied_fraction for r in raw] == [s["copied_fraction"] for s in served]
    assert [r.likelihood and r.likelihood.get("keyword_stuffing") for r in raw] == [
        s["likelihood"] and s["likelihood"]["keyword_stuffing"] for s in served
    ]


def test_both_likelihood_arms_score_alike_and_the_counter_sees_every_logprob(settings):
    from bench.experiments import experiment_scorer
    from bench.throughput import LIKELIHOOD_ARMS

    likelihood = settings.model_copy(update={"method": "likelihood"})
    rewards, positions = {}, {}
    for arm in ("before", "after"):
        engine = LogprobCounter(FakeEngine())
        scorer = experiment_scorer(engine, None, likelihood, likelihood_arm=LIKELIHOOD_ARMS[arm])
        _, results = asyncio.run(_singles_in_process(scorer, ITEMS, score_options(likelihood), concurrency=3))
        rewards[arm], positions[arm] = [r.reward for r in results], engine.logprob_positions
    assert rewards["before"] == rewards["after"] and all(r is not None for r in rewards["after"])
    assert positions["before"] > 0 and positions["after"] > 0
