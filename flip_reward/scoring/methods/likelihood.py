"""likelihood (backward likelihood): the real instruction scored token by token as the model's
answer to "what was the instruction?" after the response, minus the same without the response
(pointwise mutual information), and minus the mean score of unrelated instructions after
the same response (distractors). Nothing to decode or parse.

Logits only where they are scored (FLIP_LIKELIHOOD_PREFILL, on an engine that scores from its prefix
cache). Asking for prompt logprobs makes the engine compute the full-vocabulary log-softmax at
every position it computes, so the response is first prefilled without them (one token short: the
position before the instruction must be computed again for the instruction's first logprob), and
the instructions are then scored from the prefix cache, their own tokens only; so is the PMI
baseline, after the shared "(no response)" head. Only a response the text test flags as a possible
keyword stuffing (guards.py) is scored from its first token on, for the guard's fluency figure.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import cast

from flip_reward import metrics
from flip_reward.config import Settings
from flip_reward.engines.base import Engine, GenerationParams
from flip_reward.scoring import guards
from flip_reward.scoring.fitting import Fitted, PromptFitter
from flip_reward.scoring.items import ItemResult, LikelihoodDetails, ScoreItem, ScoreOptions
from flip_reward.scoring.methods.engine_calls import gather
from flip_reward.scoring.outcomes import ItemErrorCode
from flip_reward.scoring.prompts import DISTRACTOR_INSTRUCTIONS, NO_RESPONSE, build_likelihood_prompt

_PREFILL = GenerationParams(max_tokens=1)

Scored = tuple[list[float], list[float]]  # an instruction's token logprobs with and without the response


@dataclass
class LikelihoodInputs:
    """One item's likelihood prompts: the instruction scored after the response (`conditional_ids`)
    and after no response (`unconditional_ids`, the PMI baseline); the same for each distractor."""

    fitted: Fitted
    instruction_ids: list[int]
    unconditional_ids: list[int]
    response_span: tuple[int, int]  # token positions of the response in fitted.token_ids
    distractor_ids: list[list[int]] = field(default_factory=list)
    unconditional_head: list[int] = field(default_factory=list)
    needs_fluency: bool = False  # a keyword-stuffing candidate: the guard needs the response's logprobs

    @property
    def conditional_ids(self) -> list[int]:
        return self.fitted.token_ids + self.instruction_ids

    @property
    def error(self) -> str | None:
        return self.fitted.error

    @property
    def code(self) -> ItemErrorCode | None:
        return self.fitted.code

    @property
    def truncated(self) -> bool:
        return self.fitted.truncated


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -60 else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def likelihood_reward(
    cond: list[float], uncond: list[float], scale: float, distractors: Sequence[Scored] = ()
) -> tuple[float, LikelihoodDetails]:
    """Reward from the instruction's token log-probabilities with the response (`cond`) and without
    it (`uncond`); `distractors` holds the same for unrelated instructions.

    An instruction's score is its PMI, mean(cond) - mean(uncond). With distractors:
    sigmoid((score - mean distractor score) / scale), 0.5 when the response explains its own
    instruction no better than unrelated ones. Without: sigmoid(score / scale), 0.5 when the
    response tells the model nothing."""

    def score(c: list[float], u: list[float]) -> float:
        return _mean(c) - _mean(u)

    own = score(cond, uncond)
    details: LikelihoodDetails = {
        "conditional": _mean(cond),
        "unconditional": _mean(uncond),
        "scored_tokens": len(cond),
        "pmi": own,
    }
    if distractors:
        distractor_score = _mean([score(c, u) for c, u in distractors])
        details["distractor_score"], details["contrast"] = distractor_score, own - distractor_score
        return _sigmoid((own - distractor_score) / scale), details
    return _sigmoid(own / scale), details


def scored_tail(logprobs: list[float | None], n: int) -> list[float]:
    """The last n (instruction) logprobs; a gap there means the engine broke its contract, and a
    gap is never scored as 0."""
    tail = logprobs[-n:]
    if None in tail:
        raise RuntimeError("the engine returned no logprob for a scored instruction token")
    return tail  # type: ignore[return-value]


def response_span(fitted: Fitted) -> tuple[int, int]:
    """Token positions of the response inside the rendered likelihood prompt."""
    quoted = f'"""\n{fitted.response}\n"""'  # as build_likelihood_prompt quotes it: a short
    # response ("the") also occurs in the question after it
    text = fitted.text
    start = text.rindex(quoted) + 4 if quoted in text else text.rindex(fitted.response)
    end = start + len(fitted.response)
    inside = [k for k, (a, b) in enumerate(fitted.offsets) if a >= start and b <= end and b > a]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


class Likelihood:
    def __init__(self, fitter: PromptFitter, settings: Settings) -> None:
        self.fitter = fitter
        self.settings = settings
        # log p(instruction) without a response, per instruction: a GRPO group shares it.
        self._unconditional: OrderedDict[tuple[int, ...], asyncio.Future[list[float]]] = OrderedDict()

    def cache_ways(self, engine: Engine) -> tuple[bool, bool]:
        """(prefill the response without logprobs and score the instructions from the prefix cache,
        read the PMI baseline's shared head from the cache): both where FLIP_LIKELIHOOD_PREFILL is on
        and the engine scores from its prefix cache. The benchmark compares them one at a time
        (bench/experiments.py)."""
        cached = engine.scores_from_prefix_cache and self.settings.likelihood_prefill
        return cached, cached

    # --- prepare: pure, run in a worker thread (tokenizing long responses is CPU work)

    def prepare(self, item: ScoreItem, options: ScoreOptions) -> LikelihoodInputs:
        instruction_ids = self._instruction_ids(item.instruction)
        if not instruction_ids:
            return LikelihoodInputs(Fitted(error="the instruction is empty", code="empty_instruction"), [], [], (0, 0))
        k = self.settings.likelihood_distractors if options.distractors is None else options.distractors
        distractor_ids = self._distractor_ids[:k]
        longest = max([len(instruction_ids)] + [len(d) for d in distractor_ids])
        budget = self.fitter.max_model_len - longest - 1
        fitted = self.fitter.fit(build_likelihood_prompt, item, budget, offsets=True)
        head = (
            self.fitter.render(build_likelihood_prompt(NO_RESPONSE, fitted.context))
            if fitted.context
            else self._no_response_head
        )
        if fitted.error is not None:
            return LikelihoodInputs(fitted, instruction_ids, head + instruction_ids, (0, 0), distractor_ids, head)
        needs_fluency = options.copy_guard and guards.is_stuffing_candidate(item.instruction, fitted.response)
        span = response_span(fitted)
        # Read once for the span: a tuple per token that would otherwise stay alive (and be walked by
        # every young garbage collection) for as long as the item waits on the engine.
        fitted.offsets = []
        return LikelihoodInputs(
            fitted, instruction_ids, head + instruction_ids, span, distractor_ids, head, needs_fluency
        )

    def _instruction_ids(self, instruction: str) -> list[int]:
        ids = self.fitter.encode(instruction.strip())
        return ids[: self.settings.max_instruction_tokens]

    # The same for every item: tokenized once.
    @cached_property
    def _distractor_ids(self) -> list[list[int]]:
        return [self._instruction_ids(d) for d in DISTRACTOR_INSTRUCTIONS]

    @cached_property
    def _no_response_head(self) -> list[int]:
        """The PMI baseline's prompt up to the instruction, for an item without earlier turns."""
        return self.fitter.render(build_likelihood_prompt(NO_RESPONSE))

    # --- run: the engine calls, then the arithmetic

    async def run(
        self, engine: Engine, items: list[ScoreItem], prepared: list[LikelihoodInputs], options: ScoreOptions
    ) -> list[ItemResult | BaseException]:
        split, baseline_cached = self.cache_ways(engine)
        started = time.perf_counter()
        outputs = await gather([self._score_one(engine, inputs, split, baseline_cached) for inputs in prepared])
        metrics.RECONSTRUCTION_LATENCY.observe(time.perf_counter() - started)
        return [
            out if isinstance(out, BaseException) else self._result(item, inputs, out, options.copy_guard)
            for item, inputs, out in zip(items, prepared, outputs)
        ]

    def _result(
        self, item: ScoreItem, inputs: LikelihoodInputs, scored: tuple[float | None, list[Scored]], guard: bool
    ) -> ItemResult:
        fluency, ((cond, uncond), *distractors) = scored
        result = ItemResult(id=item.id, truncated=inputs.truncated, prompt_tokens=len(inputs.conditional_ids))
        reward, details = likelihood_reward(cond, uncond, self.settings.likelihood_scale, distractors)
        details["response_fluency"] = fluency
        if guard and reward > 0.0 and guards.is_keyword_stuffing(item.instruction, inputs.fitted.response, fluency):
            details.setdefault("reward_without_guard", reward)
            details["keyword_stuffing"] = True
            reward = 0.0
        result.reward, result.likelihood = reward, details
        return result

    async def _score_one(
        self, engine: Engine, inputs: LikelihoodInputs, split: bool, baseline_cached: bool
    ) -> tuple[float | None, list[Scored]]:
        """The response's fluency (None where not computed) and, for the real instruction and then each
        distractor, its logprobs after the response and after no response (the PMI baseline)."""
        n = len(inputs.instruction_ids)
        baselines = [(inputs.instruction_ids, inputs.unconditional_ids)] + [
            (d, inputs.unconditional_head + d) for d in inputs.distractor_ids
        ]
        # The baseline's head (system prompt, "(no response)") is shared by every item: read from the
        # prefix cache, only the instruction's tokens get logprobs.
        head = len(inputs.unconditional_head) if baseline_cached else 0
        unconditional = [self._unconditional_logprobs(engine, ids, len(ins), head) for ins, ids in baselines]
        prefix = len(inputs.fitted.token_ids)
        fluency = None
        if split and not inputs.needs_fluency:
            outs = await asyncio.gather(self._after_prefill(engine, inputs), *unconditional)
            cond, uncond = cast(list[list[float]], outs[0]), cast(list[list[float]], outs[1:])
        else:
            # The real instruction's prompt logprobs from the response on (the stuffing guard's fluency
            # figure; the shared system prompt before it may come from the prefix cache), then each
            # distractor's, once the response is in the prefix cache.
            outs = await asyncio.gather(
                self._prompt_logprobs(engine, inputs.conditional_ids, scored_from=inputs.response_span[0]),
                *unconditional,
            )
            real, uncond = cast(list[float | None], outs[0]), cast(list[list[float]], outs[1:])
            distractors = await asyncio.gather(
                *[
                    self._instruction_logprobs(engine, inputs.fitted.token_ids + d, len(d), scored_from=prefix)
                    for d in inputs.distractor_ids
                ]
            )
            cond = [scored_tail(real, n), *distractors]
            start, end = inputs.response_span
            span = real[start:end]
            # None (no guard) where a position has no logprob: never a made-up 0
            fluency = _mean(cast(list[float], span)) if span and None not in span else None
        return fluency, list(zip(cond, uncond))

    async def _after_prefill(self, engine: Engine, inputs: LikelihoodInputs) -> list[list[float]]:
        """The response prefilled without logprobs, one token short, then the real instruction and
        every distractor scored from the prefix cache at once."""
        head = inputs.fitted.token_ids[:-1]
        await engine.generate(head, _PREFILL)
        metrics.PROMPT_TOKENS.inc(len(head))
        prefix = len(inputs.fitted.token_ids)
        return list(
            await asyncio.gather(
                *[
                    self._instruction_logprobs(engine, inputs.fitted.token_ids + ins, len(ins), scored_from=prefix)
                    for ins in [inputs.instruction_ids, *inputs.distractor_ids]
                ]
            )
        )

    async def _prompt_logprobs(self, engine: Engine, token_ids: list[int], scored_from: int = 0) -> list[float | None]:
        logprobs = await engine.prompt_logprobs(token_ids, scored_from)
        metrics.PROMPT_TOKENS.inc(len(token_ids))
        return logprobs

    async def _instruction_logprobs(
        self, engine: Engine, token_ids: list[int], n: int, scored_from: int = 0
    ) -> list[float]:
        return scored_tail(await self._prompt_logprobs(engine, token_ids, scored_from), n)

    async def _unconditional_logprobs(
        self, engine: Engine, token_ids: list[int], n: int, scored_from: int = 0
    ) -> list[float]:
        """Cached per prompt, in flight included: a batch asks for each distractor's baseline once
        per item, all at the same moment."""
        key = tuple(token_ids)
        task = self._unconditional.get(key)
        if task is None:
            task = asyncio.ensure_future(self._instruction_logprobs(engine, token_ids, n, scored_from))
            self._unconditional[key] = task
            while len(self._unconditional) > 4096:
                self._unconditional.popitem(last=False)
        self._unconditional.move_to_end(key)
        try:
            return await asyncio.shield(task)  # one caller giving up must not cancel it for the others
        except BaseException:
            if task.done() and self._unconditional.get(key) is task:
                del self._unconditional[key]  # a failure is not cached
            raise
