"""bench/experiments.py: the scoring paths the service dropped, kept for the benchmarks' comparisons."""

import asyncio
import re

from bench.experiments import build_experimental_prompt, experiment_scorer, paper_output_regex
from flip_reward.config import Settings
from flip_reward.scoring.items import ScoreItem, ScoreOptions
from flip_reward.scoring.parse import parse_direct
from tests.fakes import FakeEngine, HashEmbedder

ITEM = ScoreItem("Write a short poem about the autumn rain", "Grey drops drum on tin roofs across the city")


def test_fewshot_mode_shows_worked_examples_before_the_response():
    prompt = build_experimental_prompt("Grey drops drum on tin roofs.", None, "fewshot")
    roles = [m["role"] for m in prompt.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Grey drops drum" in prompt.messages[-1]["content"]
    assert all("Grey drops" not in m["content"] for m in prompt.messages[:-1])
    assert prompt.answer_prefix == "" and prompt.stop == ()


def test_prefix_mode_starts_the_answer_and_stops_at_the_line_end():
    prompt = build_experimental_prompt("x", None, "prefix")
    assert prompt.answer_prefix == 'Instruction: "' and prompt.stop == ("\n",)
    parsed = parse_direct(prompt.answer_prefix + 'Write a poem about rain."')
    assert parsed.instruction == "Write a poem about rain." and parsed.parsed


def test_structured_output_regex_accepts_the_paper_shape():
    tail = paper_output_regex('{"REASONING": "')
    assert re.fullmatch(tail, 'lists tips.", "INFERRED INSTRUCTION": "Give three tips for \\"focus\\"."}')
    assert not re.fullmatch(tail, "lists tips. Instruction: give tips")
    assert re.fullmatch(paper_output_regex(""), '{"REASONING": "x", "INFERRED INSTRUCTION": "y"}')
    assert paper_output_regex("Instruction:") is None


def test_the_experiment_scorer_runs_each_prompt_mode_and_constrains_paper_output():
    engine = FakeEngine()
    scorer = experiment_scorer(engine, HashEmbedder(), Settings(method="generate"), structured_output=True)
    for mode in ("fewshot", "prefix", "direct", "paper"):
        options = ScoreOptions(similarity="hybrid", prompt_mode=mode, method="generate")  # type: ignore[arg-type]
        (result,) = asyncio.run(scorer.score([ITEM], options))
        assert result.reward is not None, mode
        assert (engine.last_params.regex is not None) == (mode == "paper"), mode
    assert "Write a Python function" in engine.tokenizer.decode(engine.calls[0])  # fewshot's example


def test_a_likelihood_arm_uses_the_prefix_cache_only_as_told():
    for arm, prefilled in (((False, False), False), ((False, True), False), ((True, True), True)):
        engine = FakeEngine()
        engine.scores_from_prefix_cache = True
        scorer = experiment_scorer(engine, None, Settings(likelihood_distractors=0), likelihood_arm=arm)
        asyncio.run(scorer.score([ITEM], ScoreOptions(similarity="hybrid", prompt_mode="direct")))
        assert (len(engine.calls) > len(engine.scored_from)) == prefilled, arm  # a generate call: the prefill
