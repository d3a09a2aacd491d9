"""Scoring paths the measurements did not adopt, kept here so the benchmarks can still compare them
with what the service runs (the service itself has none of them):

- `fewshot` and `prefix` prompts of `generate` (docs/experiments/prompt-modes.md: no accuracy
  difference from `direct` that 24-64 pairs can show);
- `paper` output constrained to its JSON shape with vLLM structured outputs (halved parse failures,
  no accuracy gain, slower on a CPU);
- the likelihood method's ways of using the prefix cache one at a time (bench/throughput.py
  --likelihood-ab, bench/scorer_equivalence.py); the service turns both on together
  (FLIP_LIKELIHOOD_PREFILL).

experiment_scorer() builds the service's Scorer with these swapped in.
"""

from __future__ import annotations

import re
from typing import Any

from flip_reward.config import Settings
from flip_reward.engines.base import Engine, GenerationParams
from flip_reward.scoring.fitting import Fitted
from flip_reward.scoring.items import ScoreItem, ScoreOptions
from flip_reward.scoring.methods.generate import Generate
from flip_reward.scoring.methods.likelihood import Likelihood
from flip_reward.scoring.prompts import ASK_DIRECT, Prompt, build_reconstruction_prompt
from flip_reward.scoring.scorer import Scorer

EXPERIMENTAL_PROMPT_MODES = ("fewshot", "prefix")

# fewshot: worked examples shown as earlier turns (written for this project, not from any eval set).
_EXAMPLES = (
    (
        "Hi all, the quarterly review moves from Monday to Wednesday at 10am, still in room 4. "
        "Please update your calendars. Thanks, Dana",
        "Write a short email to my team saying the quarterly review moved from Monday to Wednesday at 10am.",
    ),
    (
        "def is_even(n):\n    return n % 2 == 0",
        "Write a Python function that tells whether a number is even.",
    ),
)
_PREFIX = 'Instruction: "'


def build_experimental_prompt(response: str, context: list[dict[str, str]] | None, mode: str) -> Prompt:
    """`fewshot`: the `direct` prompt after two worked examples; `prefix`: the `direct` prompt with
    the answer started as `Instruction: "`, stopped at the end of the line."""
    direct = build_reconstruction_prompt(response, context, "direct")
    if mode == "fewshot":
        examples = []
        for example, instruction in _EXAMPLES:
            examples.append({"role": "user", "content": f'Response:\n"""\n{example}\n"""\n\n{ASK_DIRECT}'})
            examples.append({"role": "assistant", "content": instruction})
        return Prompt(messages=[direct.messages[0], *examples, *direct.messages[1:]])
    if mode == "prefix":
        return Prompt(messages=direct.messages, answer_prefix=_PREFIX, stop=("\n",))
    raise ValueError(f"not an experimental prompt mode: {mode}")


# The characters a JSON string may hold: no bare quote, backslash or control character.
_JSON_STRING = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt])*'
_LITERAL_HEAD = '{"REASONING": "'


def _literal(text: str) -> str:
    """Escape regex metacharacters only (re.escape also escapes spaces, which xgrammar warns about)."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", text)


def paper_output_regex(answer_prefix: str) -> str | None:
    """Regex for what the model writes after `answer_prefix` in paper mode, or None where the prefix
    is not the start of the JSON shape (no constraint rather than one the model could never meet)."""
    tail = _JSON_STRING + _literal('", "INFERRED INSTRUCTION": "') + _JSON_STRING + _literal('"}')
    if answer_prefix == "":
        return _literal(_LITERAL_HEAD) + tail
    if answer_prefix == _LITERAL_HEAD:
        return tail
    return None


class ExperimentalGenerate(Generate):
    """generate with the experimental prompt modes, and paper output optionally constrained."""

    def __init__(self, *args: Any, structured_output: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.structured_output = structured_output

    def prepare(self, item: ScoreItem, options: ScoreOptions) -> Fitted:
        mode = options.prompt_mode
        if mode not in EXPERIMENTAL_PROMPT_MODES:
            return super().prepare(item, options)
        budget = self.fitter.max_model_len - self.settings.max_tokens
        return self.fitter.fit(
            lambda response, context: build_experimental_prompt(response, context, mode), item, budget
        )

    def params(self, fitted: Fitted, options: ScoreOptions) -> GenerationParams:
        params = super().params(fitted, options)
        if not (self.structured_output and options.prompt_mode == "paper"):
            return params
        return GenerationParams(
            params.max_tokens, params.temperature, params.seed, params.stop, paper_output_regex(fitted.answer_prefix)
        )


class LikelihoodArm(Likelihood):
    """The likelihood method with each use of the prefix cache chosen: `split_prefill` (prefill the
    response without logprobs, then score the instructions from the cache) and `baseline_from_cache`
    (the PMI baseline's shared head read from the cache)."""

    def __init__(self, *args: Any, split_prefill: bool, baseline_from_cache: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arm = (split_prefill, baseline_from_cache)

    def cache_ways(self, engine: Engine) -> tuple[bool, bool]:
        return self.arm


def experiment_scorer(
    engine: Engine,
    embedder: Any,
    settings: Settings,
    *,
    structured_output: bool = False,
    likelihood_arm: tuple[bool, bool] | None = None,
) -> Scorer:
    """The service's Scorer with the experimental generate (every prompt mode) and, given
    `likelihood_arm` (split_prefill, baseline_from_cache), the likelihood method fixed to that arm."""
    scorer = Scorer(engine, embedder, settings)
    scorer.methods["generate"] = ExperimentalGenerate(
        scorer.fitter, settings, embedder, structured_output=structured_output
    )
    if likelihood_arm is not None:
        split, baseline = likelihood_arm
        scorer.methods["likelihood"] = LikelihoodArm(
            scorer.fitter, settings, split_prefill=split, baseline_from_cache=baseline
        )
    return scorer
