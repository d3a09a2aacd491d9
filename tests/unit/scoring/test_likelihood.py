"""flip_reward/scoring/methods/likelihood.py: the pure prepare (a tokenizer, no engine), both ways of
scoring (one request per instruction; a prefill without logprobs, then the instructions from the
prefix cache) and the reward arithmetic. The engine is a test double (tests/fakes.py)."""

import asyncio
import math

import pytest

from flip_reward.config import Settings
from flip_reward.scoring.fitting import PromptFitter
from flip_reward.scoring.items import ScoreItem, ScoreOptions
from flip_reward.scoring.methods.likelihood import Likelihood, likelihood_reward
from flip_reward.scoring.scorer import Scorer
from tests.fakes import FakeEngine, HashEmbedder, WordTokenizer

INSTRUCTION = "Write a short poem about the autumn rain in the city"
HONEST = "Grey drops drum on tin roofs across the city"
STUFFED = ("city rain autumn poem short write " * 3).strip()  # backwards: the copy guard deletes nothing
OPTIONS = ScoreOptions(similarity="hybrid", prompt_mode="direct", method="likelihood")


def _method(**settings) -> Likelihood:
    return Likelihood(PromptFitter(WordTokenizer(), 512), Settings(**settings))


def test_prepare_needs_only_a_tokenizer_and_flags_stuffing_candidates():
    method = _method(likelihood_distractors=2)
    honest = method.prepare(ScoreItem(INSTRUCTION, HONEST), OPTIONS)
    assert honest.error is None and not honest.needs_fluency and len(honest.distractor_ids) == 2
    start, end = honest.response_span
    assert method.fitter.tokenizer.decode(honest.fitted.token_ids[start:end]) == HONEST
    assert honest.conditional_ids[-len(honest.instruction_ids) :] == honest.instruction_ids
    assert method.prepare(ScoreItem(INSTRUCTION, STUFFED), OPTIONS).needs_fluency
    unguarded = ScoreOptions(similarity="hybrid", prompt_mode="direct", method="likelihood", copy_guard=False)
    assert not method.prepare(ScoreItem(INSTRUCTION, STUFFED), unguarded).needs_fluency
    assert method.prepare(ScoreItem("  ", HONEST), OPTIONS).error == "the instruction is empty"
    assert method.prepare(ScoreItem(INSTRUCTION, "<think>x</think>"), OPTIONS).error.startswith("response is empty")


def _score(engine: FakeEngine, prefill: bool, responses: list[str], **settings) -> list:
    """Scored on an engine that reads its prefix cache, with FLIP_LIKELIHOOD_PREFILL=`prefill`."""
    engine.scores_from_prefix_cache = True
    scorer = Scorer(engine, HashEmbedder(), Settings(likelihood_prefill=prefill, **settings))
    return asyncio.run(scorer.score([ScoreItem(INSTRUCTION, r, id=str(k)) for k, r in enumerate(responses)], OPTIONS))


def _conditional_calls(engine: FakeEngine) -> list[tuple[list[int], int]]:
    """The prompt_logprobs calls after the response (not the PMI baselines, after "(no response)")."""
    return [(c, hint) for c, hint in engine.logprob_calls if "(no response)" not in engine.tokenizer.decode(c)]


@pytest.mark.parametrize("distractors", [0, 3])
def test_the_prefill_way_gives_the_same_rewards_as_one_request(distractors):
    responses = [HONEST, STUFFED, "Rain, rain, go away; come again another day."]
    old = _score(FakeEngine(), False, responses, likelihood_distractors=distractors)
    new = _score(FakeEngine(), True, responses, likelihood_distractors=distractors)
    assert [r.reward for r in new] == [r.reward for r in old]
    for a, b in zip(old, new):
        fluency_a, fluency_b = a.likelihood.pop("response_fluency"), b.likelihood.pop("response_fluency")
        assert a.likelihood == b.likelihood
        assert fluency_a is not None and (fluency_b is None) == (b.id != "1")  # only the candidate is read


def test_the_prefill_computes_no_logprobs_and_the_instructions_are_scored_from_its_cache():
    engine = FakeEngine()
    (result,) = _score(engine, True, [HONEST], likelihood_distractors=2)
    scored = _conditional_calls(engine)
    assert len(scored) == 3  # one prompt_logprobs call per instruction
    (prefill,) = [c for c in engine.calls if all(c is not s for s, _ in engine.logprob_calls)]  # the generate call
    response_prompt = prefill + [scored[0][0][len(prefill)]]  # one token short
    assert all(c[: len(response_prompt)] == response_prompt for c, _ in scored)
    assert [hint for _, hint in scored] == [len(response_prompt)] * 3
    assert result.likelihood["response_fluency"] is None and result.likelihood["contrast"] is not None


def test_a_stuffing_candidate_is_read_from_the_response_on_and_caught():
    engine = FakeEngine()
    (result,) = _score(engine, True, [STUFFED], likelihood_distractors=0)
    ((call, hint),) = _conditional_calls(engine)  # no prefill: the one request computes the response's logprobs too
    assert len(engine.calls) == len(engine.logprob_calls)
    assert engine.tokenizer.decode(call[hint:]).startswith("city rain")
    assert result.likelihood["response_fluency"] is not None


@pytest.mark.parametrize(
    "engine_can,setting,prefilled", [(True, True, True), (True, False, False), (False, True, False)]
)
def test_the_setting_turns_the_prefill_on_where_the_engine_can(engine_can, setting, prefilled):
    engine = FakeEngine()
    engine.scores_from_prefix_cache = engine_can
    scorer = Scorer(engine, HashEmbedder(), Settings(likelihood_distractors=0, likelihood_prefill=setting))
    asyncio.run(scorer.score([ScoreItem(INSTRUCTION, HONEST)], OPTIONS))
    assert (len(engine.calls) > len(engine.scored_from)) == prefilled  # a generate call: the prefill


def test_likelihood_reward_formula():
    cond, uncond = [-1.0, -2.0, -3.0], [-2.0, -2.0, -5.0]
    reward, details = likelihood_reward(cond, uncond, scale=1.0)
    assert details["pmi"] == pytest.approx(1.0) and reward == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert details["scored_tokens"] == 3
    reward, _ = likelihood_reward(cond, uncond, scale=2.0)
    assert reward == pytest.approx(1 / (1 + math.exp(-0.5)))


def test_likelihood_reward_with_distractors():
    cond, uncond = [-1.0, -2.0, -3.0], [-2.0, -2.0, -5.0]  # pmi 1.0
    distractors = [([-4.0], [-4.0]), ([-2.0, -2.0], [-3.0, -3.0])]  # pmi 0.0 and 1.0: mean 0.5
    reward, details = likelihood_reward(cond, uncond, 1.0, distractors)
    assert details["distractor_score"] == pytest.approx(0.5) and details["contrast"] == pytest.approx(0.5)
    assert reward == pytest.approx(1 / (1 + math.exp(-0.5)))
    # a response that makes every instruction as likely as its own: 0.5, whatever its pmi
    reward, _ = likelihood_reward(cond, uncond, 1.0, [(cond, uncond)] * 3)
    assert reward == pytest.approx(0.5)


def test_the_pmi_baselines_are_scored_after_their_shared_head_from_the_cache():
    engine = FakeEngine()
    engine.scores_from_prefix_cache = True
    scorer = Scorer(engine, None, Settings(likelihood_distractors=1))
    asyncio.run(scorer.score([ScoreItem(INSTRUCTION, HONEST)], OPTIONS))
    head = len(scorer.methods["likelihood"]._no_response_head)
    baselines = [hint for call, hint in engine.logprob_calls if "(no response)" in engine.tokenizer.decode(call)]
    assert baselines == [head, head]  # the real instruction's and the distractor's
