"""flip_reward/engines/prompt_logprobs.py and the engines that use it: vLLM's prompt log-probabilities read
in every shape its model runners produce (tests/vllm_shapes.py builds them with vLLM's own classes,
citing the runner code each shape mirrors). The H200 failure (issue 20) was the V2 runner's
end-aligned list read as if it were the V1 runner's full-length one."""

import asyncio
import math

import pytest

from flip_reward.config import Settings
from flip_reward.engines.openai_remote import read_logprobs
from flip_reward.engines.prompt_logprobs import UnreadablePromptLogprobs, align_prompt_logprobs, layout, local_logprob
from flip_reward.engines.vllm_local import read_prompt_logprobs
from flip_reward.scoring.items import ScoreItem, ScoreOptions
from flip_reward.scoring.scorer import Scorer
from tests.fakes import HashEmbedder, WordTokenizer
from tests.vllm_shapes import (
    RUNNERS,
    json_prompt_logprobs,
    runner_output,
    simulated_core_engine,
    true_logprobs,
)

IDS = list(range(100, 140))  # 40 prompt tokens
TRUTH = true_logprobs(IDS)


def expected(cached: int) -> list[float | None]:
    return [None] * (cached + 1) + TRUTH[cached + 1 :]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize(
    "cached,chunk",
    [
        (0, None),  # nothing cached: both runners return the full list
        (16, None),  # a hit of whole blocks: V1 leaves 16 rows unwritten, V2 returns 23 entries
        (16, 7),  # chunked prefill: V1 writes chunk by chunk, V2 concatenates the chunks' rows
        (0, 9),
        (38, None),  # the longest hit vLLM allows (never the last token): one scored position
    ],
)
def test_each_runner_layout_reads_the_computed_positions(runner, cached, chunk):
    out = runner_output(IDS, runner, cached, chunk=chunk)
    assert len(out.prompt_logprobs) == (len(IDS) if runner == "v1" else len(IDS) - cached)
    assert read_prompt_logprobs(out) == pytest.approx(expected(cached), nan_ok=False)


@pytest.mark.parametrize("runner", RUNNERS)
def test_more_cached_than_reported_is_unreadable_not_shifted(runner):
    """Preempted before its prefill and resumed, a request finds more of its prompt cached than it
    reports (num_cached_tokens is set at its first scheduling): V1 leaves those rows unwritten, V2
    returns fewer entries than the reported hit implies. Neither may be read as a score."""
    out = runner_output(IDS, runner, 16, computed_from=24)
    with pytest.raises(UnreadablePromptLogprobs):
        read_prompt_logprobs(out)


def test_v2_list_read_from_the_start_is_what_failed_on_the_h200():
    """The old reader zipped the list with the prompt from position 0 and took positions up to the
    cached count as missing. The likelihood method scores a short instruction after a long cached
    response: a V2 list of P - c entries then holds nothing past the cached count, and every scored
    token came back None ("the engine returned no logprob for a scored instruction token")."""
    out = runner_output(IDS, "v2", 32)  # 8 instruction tokens after a 32-token cached response

    def old_reader(out):
        cached = out.num_cached_tokens or 0
        return [
            None if position is None or k <= cached else position[token_id].logprob
            for k, (token_id, position) in enumerate(zip(out.prompt_token_ids, out.prompt_logprobs))
        ]

    assert old_reader(out) == [None] * 8
    assert read_prompt_logprobs(out)[-7:] == pytest.approx(TRUTH[-7:])


@pytest.mark.parametrize(
    "entries,cached",
    [
        (None, 0),
        ([None] * 10, 0),  # neither full nor end-aligned
        ([None] * 39, 0),  # one short with nothing cached
        ([None] * 25, 16),  # two more than a V2 list after a hit of 16
    ],
)
def test_a_list_that_fits_no_layout_is_refused(entries, cached):
    with pytest.raises(UnreadablePromptLogprobs):
        align_prompt_logprobs(IDS, entries, cached, local_logprob)


def test_a_shifted_list_is_refused_by_its_token_ids():
    out = runner_output(IDS, "v2", 16)
    shifted = [None] + out.prompt_logprobs[2:] + [out.prompt_logprobs[-1]]  # right length, off by one
    with pytest.raises(UnreadablePromptLogprobs, match="position 17"):
        align_prompt_logprobs(IDS, shifted, 16, local_logprob)
    no_leading_none = out.prompt_logprobs[1:] + [out.prompt_logprobs[-1]]
    with pytest.raises(UnreadablePromptLogprobs, match="None"):
        align_prompt_logprobs(IDS, no_leading_none, 16, local_logprob)


def test_layouts_are_never_ambiguous():
    for n in range(1, 30):
        for cached in range(n):
            for entries in range(n + 2):
                found = layout(n, entries, cached)
                assert found in ({"full"} if entries == n else {"tail", None})
                assert found != "tail" or entries == n - cached


@pytest.mark.parametrize("runner", RUNNERS)
def test_remote_json_replies_read_like_the_local_ones(runner):
    """vLLM's /inference/v1/generate and /v1/completions serialize the same list (token ids as
    strings); the remote reader aligns it the same way."""
    for cached in (0, 16):
        out = runner_output(IDS, runner, cached)
        if runner == "v1" and cached:  # NaN garbage in unwritten rows: vLLM answers 400 instead
            out.prompt_logprobs[1 : cached + 1] = [{0: e[next(iter(e))]} for e in out.prompt_logprobs[1 : cached + 1]]
            for e in out.prompt_logprobs[1 : cached + 1]:
                e[0].logprob = -1.0
        assert read_logprobs(IDS, json_prompt_logprobs(out.prompt_logprobs), cached) == pytest.approx(expected(cached))
    with pytest.raises(UnreadablePromptLogprobs):
        read_logprobs(IDS, json_prompt_logprobs(runner_output(IDS, runner, 16, computed_from=20).prompt_logprobs), 16)


# --- the in-process engine over a simulated core in each runner's shape


def _engine(runner: str, **kwargs):
    return simulated_core_engine(runner, WordTokenizer(), **kwargs)


@pytest.mark.parametrize("runner", RUNNERS)
def test_engine_reads_the_tail_from_the_cache_and_runs_a_repeated_prompt_again(runner):
    engine = _engine(runner)

    async def go():
        first = await engine.prompt_logprobs(IDS[:24], scored_from=0)  # fills blocks up to 24
        tail = await engine.prompt_logprobs(IDS, scored_from=30)  # a hit of 24: read from the cache
        repeated = await engine.prompt_logprobs(IDS, scored_from=30)  # a hit of 36 reaches the tail
        return first, tail, repeated

    first, tail, repeated = asyncio.run(go())
    assert first == pytest.approx([None] + true_logprobs(IDS[:24])[1:])
    assert tail == pytest.approx(expected(24)) and repeated == pytest.approx(expected(0))
    assert engine.requests == [(24, 0, False), (40, 24, True), (40, 36, True), (40, 0, False)]


@pytest.mark.parametrize("runner", RUNNERS)
def test_engine_runs_a_resumed_request_again_and_fails_the_item_if_still_unreadable(runner):
    engine = _engine(runner, resume_more=4)
    asyncio.run(engine.prompt_logprobs(IDS[:24]))
    assert asyncio.run(engine.prompt_logprobs(IDS, scored_from=30)) == pytest.approx(expected(0))
    assert [r[2] for r in engine.requests[1:]] == [True, False]  # read the cache, then computed in full

    broken = _engine(runner, always_resumed=True)
    broken.blocks = set(engine.blocks)
    with pytest.raises(UnreadablePromptLogprobs):
        asyncio.run(broken.prompt_logprobs(IDS, scored_from=30))


# --- the likelihood reward from every shape equals the reward from the uncached full list

INSTRUCTION = "Write a short poem about the autumn rain in the city"
RESPONSES = [
    "Grey drops drum on tin roofs across the city while the lamps come on one by one",
    ("city rain autumn poem short write " * 3).strip(),  # a stuffing candidate: read from its first token
    "Rain, rain, go away; come again another day.",
]
OPTIONS = ScoreOptions(similarity="hybrid", prompt_mode="direct", method="likelihood")


def _rewards(engine, distractors: int = 3) -> list:
    scorer = Scorer(engine, HashEmbedder(), Settings(likelihood_distractors=distractors))

    async def go():
        singles = [(await scorer.score([ScoreItem(INSTRUCTION, r, id="s")], OPTIONS))[0] for r in RESPONSES]
        batch = await scorer.score([ScoreItem(INSTRUCTION, r, id=str(k)) for k, r in enumerate(RESPONSES)], OPTIONS)
        return singles + batch

    return asyncio.run(go())


@pytest.mark.parametrize(
    "runner,kwargs",
    [
        ("v1", {}),
        ("v2", {}),  # end-aligned after every cache hit: the H200's shape
        ("v2", {"chunk": 5}),
        ("v1", {"chunk": 5}),
        ("v2", {"block": 16}),
        ("v1", {"resume_more": 4}),
        ("v2", {"resume_more": 4}),
    ],
)
def test_likelihood_rewards_are_the_same_in_every_shape(runner, kwargs):
    reference = _rewards(_engine("v1", cache=False))
    shaped = _rewards(_engine(runner, **kwargs))
    assert all(r.error is None and math.isfinite(r.reward) for r in reference)
    assert [r.reward for r in shaped] == pytest.approx([r.reward for r in reference], abs=1e-9)
    for a, b in zip(reference, shaped):
        assert a.likelihood["contrast"] == pytest.approx(b.likelihood["contrast"], abs=1e-9)


def test_an_unreadable_item_fails_with_its_code_never_a_score():
    (result, *_) = _rewards(_engine("v2", always_resumed=True), distractors=1)
    assert result.reward is None and result.code == "unreadable_logprobs"
    assert "position" in result.error or "entries" in result.error
